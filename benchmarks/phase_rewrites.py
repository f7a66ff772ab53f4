"""4x4 stride-2 convs rewritten by phase decomposition, against oneDNN's kernels (measured in session 5, not adopted).

    python benchmarks/phase_rewrites.py

A 4x4 stride-2 conv (padding 1) splits into 2x2 phases of the input: space-to-depth turns it into a 2x2 stride-1 conv
on 4x the channels, a transposed conv becomes a 3x3 stride-1 conv to 4x the output channels followed by a pixel
shuffle (sub-pixel conv), and the weight gradient becomes four GEMMs over row-shifted views of the space-to-depth
input (no patch copy). Each rewrite is checked against the native op in float64, then timed forward + backward
(autograd over input, weight and bias) in bf16, channels-last, batch 64, ms per call. They win only where oneDNN is
slow with one image channel, and there by too little to show in a whole vae-mnist step (RESULTS.md, session 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conv_weight_grad import ms_per_call  # benchmarks/ is on the path when this runs as a script

CL = torch.channels_last
# kernel row used by output phase a (0, 1) at input offset e - 1 (e = 0, 1, 2) of a k4 s2 p1 transposed conv; -1: none
_SUBPIXEL_TAPS = torch.tensor([[3, 1, -1], [-1, 2, 0]])
_ky, _kx = _SUBPIXEL_TAPS.view(2, 1, 3, 1), _SUBPIXEL_TAPS.view(1, 2, 1, 3)
_TAP_OF = torch.where((_ky >= 0) & (_kx >= 0), _ky * 4 + _kx, -1).reshape(-1)  # (a, c, ey, ex) -> kernel tap or -1
_HELD = (_TAP_OF >= 0).nonzero().squeeze(1)


class SubpixelConvTranspose(torch.autograd.Function):
    """conv_transpose2d(x, w (C, O, 4, 4), b, stride 2, padding 1) as conv2d to 4O channels (3x3) + pixel shuffle."""

    @staticmethod
    def forward(ctx, x, w, b):
        n, c, h, wd = x.shape
        o = w.shape[1]
        w4 = w.new_zeros(c, o, 36)
        w4[:, :, _HELD] = w.reshape(c, o, 16)[:, :, _TAP_OF[_HELD]]
        w4 = w4.view(c, o, 2, 2, 3, 3).permute(1, 2, 3, 0, 4, 5).reshape(4 * o, c, 3, 3).contiguous(memory_format=CL)
        out4 = F.conv2d(x, w4, None, 1, 1)  # (N, 4O, H, W), channel o * 4 + a * 2 + c
        out = torch.empty((n, o, 2 * h, 2 * wd), dtype=out4.dtype, memory_format=CL)
        out.permute(0, 2, 3, 1).view(n, h, 2, wd, 2, o).copy_(
            out4.permute(0, 2, 3, 1).view(n, h, wd, o, 2, 2).permute(0, 1, 4, 2, 5, 3))
        ctx.save_for_backward(x, w4)
        return out if b is None else out + b.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        x, w4 = ctx.saved_tensors
        n, c, h, wd = x.shape
        o = w4.shape[0] // 4
        grad4 = torch.empty((n, 4 * o, h, wd), dtype=grad.dtype, memory_format=CL)
        grad4.permute(0, 2, 3, 1).view(n, h, wd, o, 2, 2).copy_(
            grad.permute(0, 2, 3, 1).unflatten(1, (h, 2)).unflatten(3, (wd, 2)).permute(0, 1, 3, 5, 2, 4))
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x, grad_w4, _ = torch.ops.aten.convolution_backward(
            grad4, x, w4, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [need_x, need_w, False])
        grad_w = None
        if need_w:
            held = grad_w4.reshape(o, 2, 2, c, 9).permute(3, 0, 1, 2, 4).reshape(c, o, 36)[:, :, _HELD]
            grad_w = held.new_empty(c, o, 16)
            grad_w[:, :, _TAP_OF[_HELD]] = held
            grad_w = grad_w.view(c, o, 4, 4)
        return grad_x, grad_w, grad.sum((0, 2, 3)) if need_b else None


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W), H and W even -> (N, 4C, H/2 + 1, W/2 + 1) channels-last: the 2x2 phases of x padded by 1."""
    n, c, h, w = x.shape
    phases = x.new_zeros((n, h // 2 + 1, w // 2 + 1, c, 2, 2))
    rows = x.permute(0, 2, 3, 1)
    phases[:, 1:, 1:, :, 0, 0] = rows[:, 1::2, 1::2]
    phases[:, 1:, :-1, :, 0, 1] = rows[:, 1::2, 0::2]
    phases[:, :-1, 1:, :, 1, 0] = rows[:, 0::2, 1::2]
    phases[:, :-1, :-1, :, 1, 1] = rows[:, 0::2, 0::2]
    return phases.view(n, h // 2 + 1, w // 2 + 1, 4 * c).permute(0, 3, 1, 2)


class SpaceToDepthConv(torch.autograd.Function):
    """conv2d(x, w (O, C, 4, 4), b, stride 2, padding 1) as a 2x2 stride-1 conv over space_to_depth(x)."""

    @staticmethod
    def forward(ctx, x, w, b):
        o, c = w.shape[:2]
        xs = space_to_depth(x)
        w2 = w.view(o, c, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(o, 4 * c, 2, 2).contiguous(memory_format=CL)
        ctx.save_for_backward(xs, w2)
        ctx.input_shape = x.shape
        return F.conv2d(xs, w2, b)

    @staticmethod
    def backward(ctx, grad):
        xs, w2 = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        o = w2.shape[0]
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_xs, grad_w2, _ = torch.ops.aten.convolution_backward(
            grad, xs, w2, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x, need_w, False])
        grad_w = grad_w2.view(o, c, 2, 2, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(o, c, 4, 4) if need_w else None
        grad_x = None
        if need_x:
            hs, ws = h // 2 + 1, w // 2 + 1
            padded = grad_xs.permute(0, 2, 3, 1).reshape(n, hs, ws, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
            grad_x = padded.reshape(n, c, 2 * hs, 2 * ws)[:, :, 1 : h + 1, 1 : w + 1]
        return grad_x, grad_w, grad.sum((0, 2, 3)) if need_b else None


def shifted_gemm_weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """d loss / d w (O, C, 4, 4) of conv2d(x, w, stride 2, padding 1): tap (2di + a, 2dj + c) pairs output (h, w) with
    phase (a, c) of the input at (h + di, w + dj), so each (di, dj) is one GEMM over rows shifted by di * W' + dj."""
    n, c, h, w = x.shape
    o, out_h, out_w = grad_out.shape[1:]
    hs, ws = h // 2 + 1, w // 2 + 1
    rows = n * hs * ws
    phases = x.new_zeros((rows + ws + 1, 4 * c))  # the tail keeps every shifted view in bounds (it meets zero grads)
    phases[:rows] = space_to_depth(x).permute(0, 2, 3, 1).reshape(rows, 4 * c)
    grad = grad_out.new_zeros((n, hs, ws, o))
    grad[:, :out_h, :out_w] = grad_out.permute(0, 2, 3, 1)
    grad_t = grad.view(rows, o).t()
    taps = torch.stack([grad_t @ phases[di * ws + dj : di * ws + dj + rows] for di in (0, 1) for dj in (0, 1)])
    return taps.view(2, 2, o, c, 2, 2).permute(2, 3, 0, 4, 1, 5).reshape(o, c, 4, 4)


def check_in_float64() -> None:
    torch.manual_seed(0)
    d = torch.float64
    for c, o, size in ((32, 1, 14), (8, 5, 4)):
        x, w, b = (torch.randn(2, c, size, size, dtype=d, requires_grad=True),
                   torch.randn(c, o, 4, 4, dtype=d, requires_grad=True), torch.randn(o, dtype=d, requires_grad=True))
        assert torch.autograd.gradcheck(SubpixelConvTranspose.apply, (x, w, b))
        torch.testing.assert_close(SubpixelConvTranspose.apply(x, w, b), F.conv_transpose2d(x, w, b, 2, 1))
        x, w, b = (torch.randn(2, o, 2 * size, 2 * size, dtype=d, requires_grad=True),
                   torch.randn(c, o, 4, 4, dtype=d, requires_grad=True), torch.randn(c, dtype=d, requires_grad=True))
        assert torch.autograd.gradcheck(SpaceToDepthConv.apply, (x, w, b))
        grad = torch.randn(2, c, size, size, dtype=d)
        native = torch.autograd.grad(F.conv2d(x, w, None, 2, 1), w, grad)[0]
        torch.testing.assert_close(shifted_gemm_weight_grad(x.detach(), grad), native)


def main() -> None:
    check_in_float64()
    print("float64 check: the three rewrites equal the native ops")
    torch.manual_seed(0)
    bf = torch.bfloat16
    print("| rewrite | layer | native ms | rewrite ms | speed-up |\n|---|---|---|---|---|")
    for c, o, size in ((32, 1, 14), (32, 3, 14), (64, 3, 32), (64, 32, 7)):
        x = torch.randn(64, c, size, size).to(bf).contiguous(memory_format=CL).requires_grad_()
        w = (torch.randn(c, o, 4, 4) * 0.1).to(bf).requires_grad_()
        b = torch.zeros(o, dtype=bf, requires_grad=True)
        grad = torch.randn(64, o, 2 * size, 2 * size).to(bf).contiguous(memory_format=CL)
        native = ms_per_call(repeats=200, fn=lambda: torch.autograd.grad(F.conv_transpose2d(x, w, b, 2, 1), (x, w, b), grad))
        rewrite = ms_per_call(repeats=200, fn=lambda: torch.autograd.grad(SubpixelConvTranspose.apply(x, w, b), (x, w, b), grad))
        print(f"| sub-pixel transposed conv | {c} -> {o}, {size} -> {2 * size} | {native:.3f} | {rewrite:.3f} | {native / rewrite:.2f}x |")
    for c, o, size in ((1, 32, 28), (3, 32, 64), (3, 64, 64), (11, 32, 28), (32, 64, 14)):
        x = torch.rand(64, c, size, size).to(bf).contiguous(memory_format=CL)  # an image: no input gradient
        w = (torch.randn(o, c, 4, 4) * 0.1).to(bf).contiguous(memory_format=CL).requires_grad_()
        b = torch.zeros(o, dtype=bf, requires_grad=True)
        grad = torch.randn(64, o, size // 2, size // 2).to(bf).contiguous(memory_format=CL)
        native = ms_per_call(repeats=200, fn=lambda: torch.autograd.grad(F.conv2d(x, w, b, 2, 1), (w, b), grad))
        rewrite = ms_per_call(repeats=200, fn=lambda: torch.autograd.grad(SpaceToDepthConv.apply(x, w, b), (w, b), grad))
        print(f"| space-to-depth conv | {c} -> {o}, {size} -> {size // 2} | {native:.3f} | {rewrite:.3f} | {native / rewrite:.2f}x |")
    for c, o, size in ((32, 64, 14), (64, 128, 16)):
        x = torch.randn(64, c, size, size).to(bf).contiguous(memory_format=CL)
        w = (torch.randn(o, c, 4, 4) * 0.1).to(bf).contiguous(memory_format=CL)
        grad = torch.randn(64, o, size // 2, size // 2).to(bf).contiguous(memory_format=CL)
        native = ms_per_call(repeats=200, fn=lambda: torch.ops.aten.convolution_backward(
            grad, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]))
        rewrite = ms_per_call(repeats=200, fn=lambda: shifted_gemm_weight_grad(x, grad))
        print(f"| shifted-GEMM weight gradient | {c} -> {o}, {size} -> {size // 2} | {native:.3f} | {rewrite:.3f} | {native / rewrite:.2f}x |")


if __name__ == "__main__":
    main()
