"""The patch-GEMM weight gradient equals the convolution's gradient, and the layers that use it train the same."""

import copy

import pytest
import torch
from torch import nn

import vaelab.models.conv_weight_grad as cwg
from vaelab.models.conv_weight_grad import patch_gemm_weight_grad, use_patch_gemm_weight_grads

# (layer, input size): the strided convs of the presets (4x4 stride 2, padding 1 and 2), a 3x3 BEGAN conv,
# transposed convs with and without output_padding, a rectangular kernel
LAYERS = [
    (lambda: nn.Conv2d(5, 6, 4, 2, 1), 7),
    (lambda: nn.Conv2d(5, 6, 4, 2, 2), 5),
    (lambda: nn.Conv2d(5, 6, 3, 1, 1), 4),
    (lambda: nn.Conv2d(5, 6, 4, 2, 1, bias=False), 3),
    (lambda: nn.Conv2d(5, 6, (3, 2), (2, 1), (1, 0)), 6),
    (lambda: nn.ConvTranspose2d(5, 6, 4, 2, 1, output_padding=1), 3),
    (lambda: nn.ConvTranspose2d(5, 6, 4, 2, 1), 4),
    (lambda: nn.ConvTranspose2d(5, 6, 3, 1, 1, bias=False), 3),
]


@pytest.mark.parametrize("make, size", LAYERS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_patch_gemm_weight_grad_is_the_exact_gradient(make, size, channels_last):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = layer(x)
    grad_out = torch.randn_like(y)
    expected = torch.autograd.grad(y, layer.weight, grad_out)[0]
    got = patch_gemm_weight_grad(x, grad_out, layer.weight.shape, layer.stride, layer.padding,
                                 isinstance(layer, nn.ConvTranspose2d))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make, size", LAYERS)
def test_switched_layers_give_the_native_gradients_in_bf16_and_use_the_patch_gemm(make, size, monkeypatch):
    torch.manual_seed(0)
    native = make()
    fast = copy.deepcopy(native)
    assert use_patch_gemm_weight_grads(fast) == 1
    assert fast.state_dict().keys() == native.state_dict().keys()
    calls = []
    monkeypatch.setattr(cwg, "patch_gemm_weight_grad", lambda *a: calls.append(1) or patch_gemm_weight_grad(*a))
    x = torch.randn(8, 5, size, size)
    grads = []
    for layer in (native, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        grads.append(torch.autograd.grad(y.float().pow(2).sum(), [xi, *layer.parameters()]))
    assert calls == [1]
    for a, b in zip(*grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2 * float(a.abs().max()))


def test_only_the_requested_gradients_are_computed_and_double_backward_works(monkeypatch):
    torch.manual_seed(0)
    native = nn.Conv2d(4, 8, 4, 2, 1)
    fast = copy.deepcopy(native)
    use_patch_gemm_weight_grads(fast)
    calls = []
    monkeypatch.setattr(cwg, "patch_gemm_weight_grad", lambda *a: calls.append(1) or patch_gemm_weight_grad(*a))
    x = torch.randn(6, 4, 7, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(x)
    # an optimizer over the input side only: no weight gradient is computed
    torch.autograd.grad(y.float().sum(), x, retain_graph=True)
    assert calls == []
    # a gradient penalty: the input gradient with create_graph (native, differentiable), then its weight gradient
    results = []
    for layer in (native, fast):
        xi = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(xi).float().pow(2).sum()
        g = torch.autograd.grad(out, xi, create_graph=True)[0]
        results.append(torch.autograd.grad(g.pow(2).sum(), layer.weight)[0])
    torch.testing.assert_close(results[1], results[0], rtol=2e-2, atol=2e-2 * float(results[0].abs().max()))


def test_fp32_large_maps_and_unusual_convs_stay_native(monkeypatch):
    calls = []
    monkeypatch.setattr(cwg, "patch_gemm_weight_grad", lambda *a: calls.append(1) or patch_gemm_weight_grad(*a))
    model = nn.Sequential(nn.Conv2d(4, 8, 4, 2, 1), nn.Conv2d(8, 8, 3, 1, 1, groups=2), nn.Conv2d(8, 8, 3, 1, 2, dilation=2))
    assert use_patch_gemm_weight_grads(model) == 1  # grouped and dilated convs are left alone
    for size, bf16, expected in ((7, False, 0), (14, True, 0), (7, True, 1)):  # fp32; 7x7 output map; bf16 3x3
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model[0](torch.randn(2, 4, size, size))
        y.float().sum().backward()
        assert len(calls) == expected, (size, bf16)
