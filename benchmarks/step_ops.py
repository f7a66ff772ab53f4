"""Where a training step's time goes, op by op, measured inside real steps (not in isolation).

    python benchmarks/step_ops.py --preset vae-mnist --precision bf16 --top 30

A TorchDispatchMode times every aten op of ``--steps`` Trainer steps (after warm-up) and groups them by op name and
the layout / shape / dtype of their first two tensor arguments (CL = channels-last, C = contiguous NCHW, S = other
strides). Ops measured this way cost 1.3-4x what the same op costs in a tight loop on this 2-core machine (their
inputs are cold in cache in a real step), which is why isolated micro-benchmarks over-promised several rewrites
(RESULTS.md, session 4); a layout mismatch shows up here as an elementwise backward with C and CL arguments.
The mode adds its own overhead per op, so the total is above the plain step time.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vaelab.config import load_config
from vaelab.data import epoch_batches, iterate_batches
from vaelab.training import Trainer


def describe(t) -> str:
    if not torch.is_tensor(t):
        return ""
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dim() != 4:
        return f"{tuple(t.shape)} {dtype}"
    layout = "C" if t.is_contiguous() else "CL" if t.is_contiguous(memory_format=torch.channels_last) else "S"
    return f"{layout}{tuple(t.shape)} {dtype}"


class OpTimer(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        key = (func.overloadpacket.__name__, " x ".join(filter(None, map(describe, args[:2]))))
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="vae-mnist")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. train.channels_last=false")
    args = parser.parse_args()
    cfg = load_config(preset=args.preset, overrides=[f"train.precision={args.precision}", "train.trackers=[]",
                                                     "train.device=cpu", *args.set])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", progress=False)
        trainer.model.train()
        batches = epoch_batches(len(trainer.data.train), cfg.train.batch_size, 0, 0)[: 10 + args.steps]
        stream = list(iterate_batches(trainer.data.train, batches, trainer.device))
        for batch in stream[:10]:  # warm-up: oneDNN primitives, allocator
            trainer.train_step(dict(batch))
        start = time.perf_counter()
        for batch in stream[10:]:
            trainer.train_step(dict(batch))
        plain_ms = 1000 * (time.perf_counter() - start) / args.steps
        timer = OpTimer()
        with timer:
            for batch in stream[10:]:
                trainer.train_step(dict(batch))
    total_ms = 1000 * sum(timer.seconds.values()) / args.steps
    print(f"{args.preset} {args.precision}, batch {cfg.train.batch_size}: plain step {plain_ms:.2f} ms; "
          f"sum of timed ops {total_ms:.2f} ms/step")
    print("| ms/step | share | calls/step | op | arguments |\n|---|---|---|---|---|")
    for (name, shapes), seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        ms = 1000 * seconds / args.steps
        print(f"| {ms:.3f} | {100 * ms / total_ms:.1f}% | {timer.calls[(name, shapes)] // args.steps} | {name} | {shapes} |")


if __name__ == "__main__":
    main()
