"""Weight gradient of the presets' strided convolutions: oneDNN's backward-weights kernel vs the patch GEMM
(vaelab/accel/cpu_bf16_convs.py), channels-last, batch 64, ms per call.

    python benchmarks/conv_weight_grad.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from vaelab.accel.cpu_bf16_convs import patch_gemm_weight_grad

# (transposed, in channels, out channels, input size): the 4x4 stride-2 convs of vae-mnist and vaegan-mnist at 28 px
LAYERS = [(False, 32, 64, 14), (False, 64, 128, 7), (False, 64, 128, 14), (False, 128, 256, 7), (False, 256, 256, 3),
          (True, 128, 64, 3), (True, 64, 32, 7), (True, 256, 128, 3), (True, 128, 64, 7)]


def ms_per_call(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    torch.manual_seed(0)
    cl = torch.channels_last
    print("| dtype | layer | strided map positions | oneDNN ms | patch GEMM ms | speed-up |\n|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        for transposed, c_in, c_out, size in LAYERS:
            x = torch.randn(64, c_in, size, size, dtype=dtype).contiguous(memory_format=cl)
            shape = (c_in, c_out, 4, 4) if transposed else (c_out, c_in, 4, 4)
            w = torch.randn(shape, dtype=dtype).contiguous(memory_format=cl)
            y = F.conv_transpose2d(x, w, None, 2, 1) if transposed else F.conv2d(x, w, None, 2, 1)
            g = torch.randn_like(y).contiguous(memory_format=cl)
            native = lambda: torch.ops.aten.convolution_backward(g, x, w, None, [2, 2], [1, 1], [1, 1], transposed,
                                                                 [0, 0], 1, [False, True, False])[1]
            patch = lambda: patch_gemm_weight_grad(x, g, w.shape, (2, 2), (1, 1), transposed)
            a, b = ms_per_call(native), ms_per_call(patch)
            positions = size * size if transposed else y.shape[2] * y.shape[3]
            kind = "convT" if transposed else "conv"
            print(f"| {str(dtype)[6:]} | {kind} {c_in}->{c_out} @{size} | {positions} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
