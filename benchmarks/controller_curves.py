"""k_t and the convergence measure M over training for BEGAN-style runs (AVAE, BEGAN*), side by side.

    python benchmarks/controller_curves.py RUN [RUN ...] [--labels L ...] --out benchmarks/grids/avae-began-kt.png

Reads each run folder's metrics.jsonl (AVAE and BEGAN* log `k` and `M` every step) and the per-epoch `sample_fid`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vaelab.run import RunFolder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the folder names)")
    args = parser.parse_args()
    labels = args.labels or [Path(run).name for run in args.runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for run, label in zip(args.runs, labels):
        rows = RunFolder(run).read_metrics()
        steps = [r for r in rows if r.get("event") == "step" and "k" in r]
        epochs = [r for r in rows if r.get("event") == "epoch" and "sample_fid" in r]
        axes[0].plot([r["step"] for r in steps], [r["k"] for r in steps], label=label, lw=0.8)
        axes[1].plot([r["step"] for r in steps], [r["M"] for r in steps], label=label, lw=0.5, alpha=0.8)
        axes[2].plot([r["step"] for r in epochs], [r["sample_fid"] for r in epochs], label=label, marker=".")
    for ax, title in zip(axes, ("k_t", "convergence measure M", "sample FID (500 samples, per epoch)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
