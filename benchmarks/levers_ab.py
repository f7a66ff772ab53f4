"""Interleaved A/B of the training-speed switches: one process, one Trainer per variant, windows taken in turn.

    python benchmarks/levers_ab.py --preset vae-mnist --precision bf16 all-off channels_last fused cpu_bf16_convs defaults

A variant is ``defaults`` (every switch at its default, i.e. on), ``all-off``, or a '+'-joined list of the switches
to turn ON from all-off: channels_last, fused, cpu_bf16_convs (train.channels_last, train.fused_optimizer,
train.cpu_bf16_convs). Taking the windows in turn (A B C A B C ...) cancels the drift of this machine,
whose run-to-run spread (+-10%) hid the channels_last gain in separate runs (RESULTS.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vaelab.config import load_config
from vaelab.data import epoch_batches, iterate_batches
from vaelab.training import Trainer

SWITCHES = {"channels_last": "train.channels_last", "fused": "train.fused_optimizer",
            "cpu_bf16_convs": "train.cpu_bf16_convs"}


def variant_runner(variant: str, preset: str, precision: str, steps: int, out: Path):
    on = set(SWITCHES) if variant == "defaults" else set() if variant == "all-off" else set(variant.split("+"))
    unknown = on - set(SWITCHES)
    if unknown:
        raise SystemExit(f"unknown switch {sorted(unknown)}; choose from {sorted(SWITCHES)}, defaults, all-off")
    cfg = load_config(preset=preset, overrides=[f"train.precision={precision}", "train.trackers=[]",
                                                "train.device=cpu", *(f"{key}={name in on}" for name, key in SWITCHES.items())])
    trainer = Trainer(cfg, out, progress=False)
    trainer.model.train()
    batches = epoch_batches(len(trainer.data.train), cfg.train.batch_size, 0, 0)[:steps]
    stream = list(iterate_batches(trainer.data.train, batches, trainer.device))

    def window() -> float:
        start = time.perf_counter()
        for batch in stream:
            trainer.train_step(dict(batch))
        return len(stream) * cfg.train.batch_size / (time.perf_counter() - start)

    window()  # warm-up
    return window


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--preset", default="vae-mnist")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per window")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runners = {v: variant_runner(v, args.preset, args.precision, args.steps, Path(tmp) / str(i))
                   for i, v in enumerate(args.variants)}
        rates = {v: [] for v in args.variants}
        for _ in range(args.rounds):
            for v, run in runners.items():
                rates[v].append(run())
    base = statistics.median(rates[args.variants[0]])
    print(f"{args.preset} {args.precision}: images/s, median of {args.rounds} interleaved windows of {args.steps} steps")
    print("| variant | images/s | vs first | min | max |\n|---|---|---|---|---|")
    for v, r in rates.items():
        med = statistics.median(r)
        print(f"| {v} | {med:.0f} | {med / base:.2f}x | {min(r):.0f} | {max(r):.0f} |")


if __name__ == "__main__":
    main()
