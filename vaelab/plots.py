"""Plots written into run folders (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path


def plot_training_curves(rows: list[dict], out: Path, keys: list[str] | None = None, max_panels: int = 12) -> Path | None:
    """One panel per logged loss term against the step, from metrics.jsonl rows; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r.get("event") == "step"]
    if not steps:
        return None
    skip = {"event", "step", "epoch", "images_per_s"}
    if keys is None:
        keys = []
        for row in steps:
            keys += [k for k, v in row.items() if k not in skip and isinstance(v, (int, float)) and k not in keys]
    keys = keys[:max_panels]
    cols = min(4, len(keys))
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.4 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in steps if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=0.8)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.supxlabel("step", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
