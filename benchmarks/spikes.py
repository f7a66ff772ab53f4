"""The loss spikes of a BEGAN-style run (AVAE, BEGAN*): when they happen, how high, and which energy moved first.

    python benchmarks/spikes.py RUN [RUN ...] [--after-epoch 50] [--threshold 3] [--gap 50] [--show 0]

Reads metrics.jsonl (the preset logs every step). A spike starts at a step where L_g, or the discriminator's own L_d,
exceeds ``threshold`` times its median over the run's steps after ``after_epoch``; steps within ``gap`` of the previous
spiking step belong to the same spike. Each spike is classified by which energy left its median band first in the
10 steps before its start:
- ``fakes``: L_g rose first while L_d stayed: the generated images are reconstructed worse, the real ones are not
  (the decoder stepping up its own loss, or the discriminator's fake term pushing them away; the logs cannot tell
  the two apart, benchmarks/spike_replay.py can);
- ``reals``: L_d rose first: the auto-encoder lost the real digits.
Per run: the count of each kind, the spikes per 100 epochs, and the per-epoch sample FID's worst value from the
first spike's epoch on. ``--show N`` prints the steps around the first N spikes.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from vaelab.run import RunFolder

ENERGIES = ("L_d", "L_g", "L_v", "L_e", "L_s", "L_pt")


def find_spikes(steps: list[dict], threshold: float, gap: int) -> list[dict]:
    """steps: the run's step rows (each with L_d, L_g). Returns one dict per spike: start step, its epoch, the peak of
    L_g and L_d, the kind (fakes | reals: which rose first) and the index of its first row in ``steps``."""
    med = {k: statistics.median(r[k] for r in steps) for k in ("L_d", "L_g")}
    spikes: list[dict] = []
    last = -10**9
    for i, r in enumerate(steps):
        if not (r["L_g"] > threshold * med["L_g"] or r["L_d"] > threshold * med["L_d"]):
            continue
        if r["step"] - last > gap:
            kind = "fakes"
            for q in steps[max(0, i - 10):i + 1]:  # whichever left 1.5x its median first
                if q["L_d"] > 1.5 * med["L_d"] and q["L_g"] <= 1.5 * med["L_g"]:
                    kind = "reals"
                    break
                if q["L_g"] > 1.5 * med["L_g"]:
                    break
            spikes.append({"step": r["step"], "epoch": r["epoch"], "kind": kind, "index": i,
                           "peak_L_g": r["L_g"], "peak_L_d": r["L_d"]})
        else:
            spikes[-1]["peak_L_g"] = max(spikes[-1]["peak_L_g"], r["L_g"])
            spikes[-1]["peak_L_d"] = max(spikes[-1]["peak_L_d"], r["L_d"])
        last = r["step"]
    return spikes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--after-epoch", type=int, default=50)
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--gap", type=int, default=50)
    parser.add_argument("--show", type=int, default=0)
    args = parser.parse_args()
    print("| run | epochs | spikes | L_g first | L_d first | per 100 epochs | highest L_g | highest L_d "
          "| worst sample FID after the first spike |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        rows = RunFolder(run).read_metrics()
        steps = [r for r in rows if r.get("event") == "step" and "L_g" in r and r["epoch"] > args.after_epoch]
        epochs = [r for r in rows if r.get("event") == "epoch"]
        if not steps:
            print(f"| {Path(run).name} | no step rows with L_g after epoch {args.after_epoch} | | | | | | | |")
            continue
        spikes = find_spikes(steps, args.threshold, args.gap)
        span = max(1, epochs[-1]["epoch"] - args.after_epoch) if epochs else 1
        first = spikes[0]["epoch"] if spikes else None
        worst = max((e["sample_fid"] for e in epochs if first is not None and e["epoch"] >= first
                     and e.get("sample_fid") is not None), default=None)
        kinds = [s["kind"] for s in spikes]
        print(f"| {Path(run).name} | {epochs[-1]['epoch'] if epochs else '?'} | {len(spikes)} | "
              f"{kinds.count('fakes')} | {kinds.count('reals')} | {100 * len(spikes) / span:.1f} | "
              f"{max((s['peak_L_g'] for s in spikes), default=0):.2f} | "
              f"{max((s['peak_L_d'] for s in spikes), default=0):.2f} | "
              f"{'-' if worst is None else f'{worst:.0f}'} |")
        for s in spikes[:args.show]:
            first_rose = "L_g" if s["kind"] == "fakes" else "L_d"
            print(f"\n{Path(run).name}: spike at step {s['step']} (epoch {s['epoch']}, {first_rose} first)")
            for q in steps[max(0, s["index"] - 8):s["index"] + 3]:
                print(q["step"], " ".join(f"{k}={q[k]:.3f}" for k in ENERGIES if k in q))


if __name__ == "__main__":
    main()
