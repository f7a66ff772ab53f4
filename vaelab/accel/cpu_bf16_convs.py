"""Two rewrites of 2-d convolutions for bf16 training on CPU, where oneDNN picks slow kernels (the measurements
are in benchmarks/RESULTS.md, "CPU bf16 convolutions").

1. Weight gradients on small maps as one matrix product over strided patches (patches^T @ grad_output, the patches
   a strided view of the channels-last input): oneDNN's backward-weights kernel is slow when the map it reduces
   over is tiny (the last 4x4 stride-2 conv of a 28 px encoder, a discriminator's conv on a 3x3 map). Used for maps
   of at most ``MAX_POSITIONS`` positions; forward and input gradients stay oneDNN's.
2. Transposed convs with ``output_padding`` (a 28 px decoder's 3x3 -> 7x7) run on oneDNN's generic
   jit_deconvolution kernel; the same conv without padding runs on the brgemm kernel, and cropping it to the padded
   output gives the same result. Its backward keeps the original geometry.

``use_cpu_bf16_convs`` switches a model's convs to the classes below, which take these paths in bf16 on CPU while
training and are plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` otherwise (in fp32 neither rewrite is faster). The
choices are fixed rules, not per-run timings, so that runs, resumed runs and processes stay bit-identical. Double
backward (gradient penalties) takes the native weight-gradient path, which autograd can differentiate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_channels_last

# The strided side's map (conv output, transposed-conv input) at most this many positions: 3x3 and 4x4 maps
# (faster there in bf16; mixed at 7x7 and slower at 14x14)
MAX_POSITIONS = 16


def _patches(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
             out_size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B * oh * ow, kh * kw * C): every receptive field of a strided conv, as GEMM rows."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_size
    padded = F.pad(x, (pw, pw, ph, ph)).contiguous(memory_format=torch.channels_last)
    b, c = padded.shape[:2]
    s_b, s_c, s_h, s_w = padded.stride()
    view = padded.as_strided((b, oh, ow, kh, kw, c), (s_b, sh * s_h, sw * s_w, s_h, s_w, s_c))
    return view.reshape(b * oh * ow, kh * kw * c)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B * H * W, C) (a view when ``t`` is channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def patch_gemm_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, weight_shape: torch.Size, stride, padding,
                           transposed: bool) -> torch.Tensor:
    """d loss / d weight of ``conv2d`` (weight (O, C, kh, kw)) or ``conv_transpose2d`` (weight (C, O, kh, kw)).

    conv:       dW[o, c, i, j] = sum_{b,h,w} grad_out[b, o, h, w] * x_pad[b, c, h*s + i, w*s + j]
    transposed: dW[c, o, i, j] = sum_{b,h,w} x[b, c, h, w] * grad_out_pad[b, o, h*s + i, w*s + j]
    """
    kernel = tuple(weight_shape[2:])
    if transposed:  # the transposed conv's input plays the output of a strided conv over grad_out
        cols = _patches(grad_out, kernel, stride, padding, tuple(x.shape[2:]))
        grad = _rows(x).t() @ cols  # (C, kh * kw * O)
        return grad.view(weight_shape[0], *kernel, weight_shape[1]).permute(0, 3, 1, 2)
    cols = _patches(x, kernel, stride, padding, tuple(grad_out.shape[2:]))
    grad = _rows(grad_out).t() @ cols  # (O, kh * kw * C)
    return grad.view(weight_shape[0], *kernel, weight_shape[1]).permute(0, 3, 1, 2)


def _wanted(ctx, i: int) -> bool:
    """Whether this backward call needs the gradient of input ``i``. ``needs_input_grad`` only says the input
    requires grad; a call of ``autograd.grad`` over some parameters (VAE-GAN's three optimizers) needs fewer, and
    native convolutions skip the rest the same way (the engine's per-call execution info)."""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    return node is not None and torch._C._will_engine_execute_node(node)


def _output_padding_by_cropping(transposed: bool, padding, output_padding) -> bool:
    return transposed and any(output_padding) and all(o <= p for o, p in zip(output_padding, padding))


class ConvFunction(torch.autograd.Function):
    """conv2d / conv_transpose2d with the two rewrites: the cropped forward of an output-padded transposed conv and,
    when ``patch_weight_grad``, the patch-GEMM weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, transposed, output_padding, patch_weight_grad):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, transposed, output_padding)
        ctx.bias_shape = None if bias is None else list(bias.shape)
        ctx.patch_weight_grad = patch_weight_grad
        if _output_padding_by_cropping(transposed, padding, output_padding):
            full = F.conv_transpose2d(x, weight, bias, stride)  # (h - 1) * s + k: the padded output plus a border
            (ph, pw), (sh, sw), (kh, kw) = padding, stride, weight.shape[2:]
            oh = (x.shape[2] - 1) * sh - 2 * ph + kh + output_padding[0]
            ow = (x.shape[3] - 1) * sw - 2 * pw + kw + output_padding[1]
            # the layout the padded conv would return
            layout = torch.channels_last if is_channels_last(x) or is_channels_last(weight) else torch.contiguous_format
            return full[:, :, ph : ph + oh, pw : pw + ow].contiguous(memory_format=layout)
        if transposed:
            return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, transposed, output_padding = ctx.geometry
        need_x, need_w, need_b = (_wanted(ctx, i) for i in range(3))
        # double backward needs the differentiable native op below
        patch = ctx.patch_weight_grad and need_w and not torch.is_grad_enabled()
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, weight, ctx.bias_shape, list(stride), list(padding), [1, 1], transposed,
            list(output_padding), 1, [need_x, need_w and not patch, need_b and ctx.bias_shape is not None])
        if patch:
            grad_w = patch_gemm_weight_grad(x, grad_out, weight.shape, stride, padding, transposed)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _strided_positions(module: nn.Module, x: torch.Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        return x.shape[2] * x.shape[3]
    (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
    return ((x.shape[2] + 2 * ph - kh) // sh + 1) * ((x.shape[3] + 2 * pw - kw) // sw + 1)


def _forward(module: nn.Module, x: torch.Tensor, output_size=None) -> torch.Tensor:
    transposed = isinstance(module, nn.ConvTranspose2d)
    native = nn.ConvTranspose2d.forward if transposed else nn.Conv2d.forward
    if output_size is not None or x.device.type != "cpu" or x.dim() != 4 or not torch.is_grad_enabled():
        return native(module, x) if output_size is None else native(module, x, output_size)
    output_padding = module.output_padding if transposed else (0, 0)
    patch = _strided_positions(module, x) <= MAX_POSITIONS
    if not (patch or _output_padding_by_cropping(transposed, module.padding, output_padding)):
        return native(module, x)
    weight, bias = module.weight, module.bias
    autocast = torch.is_autocast_enabled("cpu")
    if (torch.get_autocast_dtype("cpu") if autocast else weight.dtype) != torch.bfloat16:
        return native(module, x)  # fp32: neither rewrite is faster
    if autocast:  # cast as autocast would, then run the function outside it
        x, weight = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        bias = None if bias is None else bias.to(torch.bfloat16)
    # the engine answers "will this node run" for graph nodes only, not for leaves under autograd.grad: a view
    # puts a node between a leaf (a parameter, a gradient penalty's input) and the function
    x, weight, bias = (t.view_as(t) if t is not None and t.requires_grad and t.grad_fn is None else t
                       for t in (x, weight, bias))
    with torch.autocast("cpu", enabled=False):
        return ConvFunction.apply(x, weight, bias, module.stride, module.padding, transposed, output_padding, patch)


class CpuBf16Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) taking the bf16 CPU paths of this module while training."""

    def forward(self, x):
        return _forward(self, x)


class CpuBf16ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters and state dict) taking the bf16 CPU paths of this module while training."""

    def forward(self, x, output_size=None):
        return _forward(self, x, output_size)


_CLASSES = {nn.Conv2d: CpuBf16Conv2d, nn.ConvTranspose2d: CpuBf16ConvTranspose2d}


def available() -> bool:
    """Whether this torch has the engine query ``_wanted`` relies on (a private call, present in the tested torch);
    without it the rewrites stay off and every conv takes torch's own path."""
    return hasattr(torch._C, "_will_engine_execute_node")


def use_cpu_bf16_convs(model: nn.Module) -> int:
    """Switch every plain 2-d conv of ``model`` (groups 1, dilation 1, zero padding) to the classes above, in place;
    returns how many were switched (0 where this torch lacks what they need: ``available``). Parameters, names and
    checkpoints are unchanged."""
    switched = 0
    if not available():
        return switched
    for module in model.modules():
        target = _CLASSES.get(type(module))
        if target and module.groups == 1 and module.dilation == (1, 1) and module.padding_mode == "zeros" \
                and isinstance(module.padding, tuple):
            module.__class__ = target
            switched += 1
    return switched
