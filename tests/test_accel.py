"""vaelab.accel: the bf16 CPU conv rewrites (patch-GEMM weight gradients, cropped output padding) give the
convolutions' results, and channels-last models keep their maps and gradients in that layout."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vaelab.accel.cpu_bf16_convs as cbc
from vaelab.accel.cpu_bf16_convs import patch_gemm_weight_grad, use_cpu_bf16_convs
from vaelab.accel.layout import ChannelsLastFlatten, use_channels_last

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


def assert_same_bf16_gradients(native: nn.Module, fast: nn.Module, x: torch.Tensor) -> None:
    """Input and parameter gradients of both layers under bf16 autocast agree to bf16 precision."""
    grads = []
    for layer in (native, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        grads.append(torch.autograd.grad(y.float().pow(2).sum(), [xi, *layer.parameters()]))
    for a, b in zip(*grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2 * float(a.abs().max()))


@pytest.mark.parametrize("make, size", LAYERS)
def test_switched_layers_give_the_native_gradients_in_bf16_and_use_the_patch_gemm(make, size, monkeypatch):
    torch.manual_seed(0)
    native = make()
    fast = copy.deepcopy(native)
    assert use_cpu_bf16_convs(fast) == 1
    assert fast.state_dict().keys() == native.state_dict().keys()
    calls = []
    monkeypatch.setattr(cbc, "patch_gemm_weight_grad", lambda *a: calls.append(1) or patch_gemm_weight_grad(*a))
    assert_same_bf16_gradients(native, fast, torch.randn(8, 5, size, size))
    assert calls == [1]


def test_only_the_requested_gradients_are_computed_and_double_backward_works(monkeypatch):
    torch.manual_seed(0)
    native = nn.Conv2d(4, 8, 4, 2, 1)
    fast = copy.deepcopy(native)
    use_cpu_bf16_convs(fast)
    calls = []
    monkeypatch.setattr(cbc, "patch_gemm_weight_grad", lambda *a: calls.append(1) or patch_gemm_weight_grad(*a))
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
    monkeypatch.setattr(cbc, "patch_gemm_weight_grad", lambda *a: calls.append(1) or patch_gemm_weight_grad(*a))
    model = nn.Sequential(nn.Conv2d(4, 8, 4, 2, 1), nn.Conv2d(8, 8, 3, 1, 1, groups=2), nn.Conv2d(8, 8, 3, 1, 2, dilation=2))
    assert use_cpu_bf16_convs(model) == 1  # grouped and dilated convs are left alone
    for size, bf16, expected in ((7, False, 0), (14, True, 0), (7, True, 1)):  # fp32; 7x7 output map; bf16 3x3
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model[0](torch.randn(2, 4, size, size))
        y.float().sum().backward()
        assert len(calls) == expected, (size, bf16)


@pytest.mark.parametrize("size, output_padding", [(3, 1), (7, 1), (4, (1, 0))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_padding_by_cropping_is_the_padded_transposed_conv(size, output_padding, channels_last, monkeypatch):
    """The unpadded transposed conv cropped to the output-padded one: the same values (float64) and layout."""
    torch.manual_seed(0)
    paddings = []
    native = F.conv_transpose2d
    monkeypatch.setattr(F, "conv_transpose2d", lambda x, w, b, stride, *rest: paddings.append(rest[:1]) or native(x, w, b, stride, *rest))
    layer = nn.ConvTranspose2d(5, 6, 4, 2, 1, output_padding=output_padding).double()
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    if channels_last:
        x, layer = x.contiguous(memory_format=torch.channels_last), layer.to(memory_format=torch.channels_last)
    expected = layer(x)
    got = cbc.ConvFunction.apply(x, layer.weight, layer.bias, layer.stride, layer.padding, True, layer.output_padding, False)
    assert paddings[-1] == ()  # the function ran the conv unpadded
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_output_padded_transposed_convs_take_the_cropped_forward_on_any_map_in_bf16(monkeypatch):
    """7x7 -> 15x15 (49 positions: no patch GEMM) still goes through the function for its forward, with the
    native gradients; an unpadded transposed conv on that map stays native."""
    torch.manual_seed(0)
    applied, calls = [], []
    original = cbc.ConvFunction.apply
    monkeypatch.setattr(cbc.ConvFunction, "apply", lambda *a: applied.append(1) or original(*a))
    monkeypatch.setattr(cbc, "patch_gemm_weight_grad", lambda *a: calls.append(1) or patch_gemm_weight_grad(*a))
    for output_padding, expected in ((1, [1]), (0, [])):
        applied.clear()
        native = nn.ConvTranspose2d(5, 6, 4, 2, 1, output_padding=output_padding)
        fast = copy.deepcopy(native)
        use_cpu_bf16_convs(fast)
        assert_same_bf16_gradients(native, fast, torch.randn(8, 5, 7, 7))
        assert applied == expected
    assert calls == []


def test_channels_last_decoders_hand_their_first_conv_a_channels_last_start_map():
    from vaelab.models.blocks import BeganDecoder, ConvDecoder
    from vaelab.models.gvae import GVAEGenerator

    torch.manual_seed(0)
    z = torch.randn(4, 8, dtype=torch.float64)
    for make in (lambda: ConvDecoder(8, 1, 28, [8, 16, 32]), lambda: BeganDecoder(8, 1, 16, 8, 1),
                 lambda: GVAEGenerator(8, 1, 16, 8, [8, 8, 8], 0.0)):
        torch.manual_seed(1)
        decoder = make().double().eval()
        reference = decoder(z)
        first_conv = next(m for m in decoder.net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d))
        seen = []
        first_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        use_channels_last(decoder)
        out = decoder(z)
        assert seen[-1].is_contiguous(memory_format=torch.channels_last) and not seen[-1].is_contiguous()
        torch.testing.assert_close(out, reference)  # the same map, only its layout differs


def test_flatten_keeps_nchw_order_and_hands_channels_last_maps_a_channels_last_gradient():
    flatten = ChannelsLastFlatten()
    torch.manual_seed(0)
    base = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(3, 100, dtype=torch.float64)
    grads = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        x = base.clone().contiguous(memory_format=layout).requires_grad_()
        out = flatten(x)
        assert torch.equal(out, base.flatten(1))  # the same features in the same order as nn.Flatten
        (grads[layout],) = torch.autograd.grad((out * weight).sum(), x)
        assert grads[layout].is_contiguous(memory_format=layout)  # the layout of the map it came from
    torch.testing.assert_close(grads[torch.channels_last], grads[torch.contiguous_format])
    # a gradient penalty differentiates the flatten's backward again
    x = base.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    penalties = []
    for fn in (flatten, lambda t: t.flatten(1)):
        (g,) = torch.autograd.grad((fn(x * x) * weight).sum(), x, create_graph=True)
        penalties.append(torch.autograd.grad(g.pow(2).sum(), x)[0])
    torch.testing.assert_close(penalties[0], penalties[1])


def test_without_the_private_engine_query_every_conv_stays_native(monkeypatch):
    """The rewrites rely on a private torch call; a torch without it trains on torch's own convolutions."""
    monkeypatch.delattr(torch._C, "_will_engine_execute_node")
    model = nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.ConvTranspose2d(4, 1, 4, 2, 1, output_padding=1))
    assert not cbc.available() and use_cpu_bf16_convs(model) == 0
    assert [type(m) for m in model] == [nn.Conv2d, nn.ConvTranspose2d]
