"""``vaelab compare``: one report over several evaluated runs (Markdown, self-contained HTML, CSV, plots)."""

from __future__ import annotations

import base64
import csv
import html
import json
import shutil
import statistics
from pathlib import Path

import yaml

from .errors import VaelabError
from .evaluation_report import format_value, better, headline
from .run import RunFolder, atomic_write_text


def _load_eval(run: Path) -> dict:
    path = run / "eval" / "metrics.json"
    if not path.is_file():
        raise VaelabError(f"{run} has not been evaluated (no eval/metrics.json); run `vaelab evaluate {run}` first")
    return json.loads(path.read_text())


def _settings_of(result: dict) -> dict:
    """Every measurement setting that can change a number, flattened: name -> value."""
    lik = result.get("likelihood", {})
    s = lik.get("settings", {})
    samples = result.get("sample_metrics", {})
    settings = {
        "split": result.get("split"), "real_images": result.get("real_images"), "samples": result.get("samples"),
        "image_size": result.get("image_shape"), "likelihood": s.get("likelihood"),
        # binarized data are drawn with the evaluation's seed: the same images only with the same seed
        "binarized": f"seed {s.get('seed')}" if s.get("binarized") else False,
        "dequantized": s.get("dequantized"),
        # conditional models report log p(x) summed over the classes, so they rank with unconditional ones; an
        # evaluation written before that (no "conditioning" setting) holds log p(x|y)
        "conditioning": "log p(x)" if "conditioning" in s or not result.get("conditional") else "log p(x|y)",
        "importance_samples": s.get("importance_samples"),
        "pixel_kernel": samples.get("mmd_pixels", {}).get("bandwidth"),
        # where a model with an encoder drew its latents: the prior and a fitted sampler give the same weights
        # different samples, so their numbers rank only against runs drawn the same way; a model without an encoder
        # has no choice (None: it ranks with every run)
        "sampler": (result.get("sampler") or {"kind": "prior"})["kind"] if "likelihood" in result else None,
    }
    for name, space in samples.get("features", {}).items():
        tag = "clf" if name.startswith("classifier") else name
        settings[f"space_{tag}"] = json.dumps(space.get("settings", {}), sort_keys=True)
    return settings


# Which settings each metric depends on (two runs' numbers compare only where these agree). The likelihood numbers
# also need a normalised likelihood (Bernoulli on grey levels is not one; --binarized makes it one).
LIKELIHOOD_SETTINGS = ("split", "real_images", "image_size", "likelihood", "binarized", "dequantized", "conditioning")


def settings_for(metric: str) -> tuple[str, ...]:
    if metric in ("elbo_nats", "elbo_bits_per_dim"):
        return LIKELIHOOD_SETTINGS
    if metric.startswith("iwae"):
        return (*LIKELIHOOD_SETTINGS, "importance_samples")
    if metric in ("reconstruction_mse_per_pixel", "kl_nats"):
        return ("split", "real_images", "image_size")
    if metric == "mmd_pixels":
        return ("split", "real_images", "samples", "sampler", "pixel_kernel")
    if metric in ("ms_ssim_samples", "sharpness"):
        return ("samples", "image_size", "sampler")
    if metric.startswith("recon_"):  # reconstructions of the real images: no samples involved
        return tuple(k for k in settings_for(metric.removeprefix("recon_")) if k not in ("samples", "sampler"))
    for tag_key in ("fid_", "kid_", "is_", "precision_", "recall_", "classes_", "label_accuracy_"):
        if metric.startswith(tag_key):
            return ("split", "real_images", "samples", "sampler", f"space_{metric[len(tag_key):]}")
    return ("split", "real_images", "samples")


def not_comparable(metric: str, results: list[dict], settings: list[dict], rows: list[dict]) -> str | None:
    """Why ``metric`` cannot be ranked across the runs that report it, or None when it can. A setting a run does not
    record (None: an older evaluation) is not held against it."""
    having = [i for i, row in enumerate(rows) if metric in row]
    if metric.startswith(("elbo", "iwae")) and any(results[i].get("likelihood", {}).get("normalised") is False
                                                   for i in having):
        return "a Bernoulli likelihood on grey-level pixels is not normalised (evaluate with --binarized to rank)"
    differing = [k for k in settings_for(metric)
                 if len({json.dumps(settings[i].get(k), sort_keys=True) for i in having
                         if settings[i].get(k) is not None}) > 1]
    if differing:
        return "measured with different " + ", ".join(differing)
    return None


def _best(values: list, higher: bool | None) -> set[int]:
    scored = [(i, v) for i, v in enumerate(values) if isinstance(v, (int, float))]
    if higher is None or len(scored) < 2:
        return set()
    target = max(v for _, v in scored) if higher else min(v for _, v in scored)
    return {i for i, v in scored if v == target}


# The three questions a comparison answers, each by the metrics that measure it (first the feature space's own)
AXES = {
    "fidelity (sharp, on-manifold samples)": ("fid_", "precision_", "sharpness"),
    "diversity and coverage (no mode collapse)": ("coverage_", "recall_", "classes_", "ms_ssim_samples"),
    "likelihood (held-out data)": ("iwae_nats", "elbo_nats"),
}


def seed_groups(runs: list[Path]) -> list[list[int]]:
    """Indices of the runs grouped by their config with the seed left out (several seeds of one setting)."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        try:
            raw = yaml.safe_load((run / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        raw.get("train", {}).pop("seed", None)
        raw.pop("vaelab_format", None)
        groups.setdefault(json.dumps(raw, sort_keys=True, default=str), []).append(i)
    return list(groups.values())


def verdict(names: list[str], rows: list[dict], metrics: list[str], unranked: dict,
            groups: list[list[int]]) -> list[tuple[str, str, str]]:
    """(axis, metric, best run(s) or why not ranked) for each metric of each axis present in the table.

    Runs of one config that differ only in seed form a group, scored by its mean; another group ties with the best
    when the two means are within the sum of their standard deviations (seed noise)."""
    lines = []
    for axis, prefixes in AXES.items():
        for m in [m for m in metrics if m.startswith(prefixes)]:
            if m in unranked:
                lines.append((axis, m, f"not ranked: {unranked[m]}"))
                continue
            higher = better(m)
            scored = []
            for group in groups:
                values = [rows[i][m] for i in group if isinstance(rows[i].get(m), (int, float))]
                if values:
                    spread = statistics.stdev(values) if len(values) > 1 else 0.0
                    scored.append((group, statistics.mean(values), spread, len(values)))
            if higher is None or len(scored) < 2:
                continue
            top = (max if higher else min)(scored, key=lambda g: g[1])
            tied = [g for g in scored if abs(g[1] - top[1]) <= top[2] + g[2]]
            label = lambda g: (names[g[0][0]] if g[3] == 1 else
                               f"{names[g[0][0]]} and {g[3] - 1} more seed(s): {format_value(g[1])} ± {format_value(g[2])}")
            text = "; ".join(label(g) if g[3] > 1 else f"{label(g)} ({format_value(g[1])})" for g in tied)
            if len(tied) > 1:
                text += " (tie within seed noise)" if any(g[3] > 1 for g in tied) else " (tie)"
            lines.append((axis, m, text))
    return lines


def compare(runs: list[str | Path], out: str | Path) -> Path:
    """One report over evaluated runs, given as run folders or as tracker runs (``mlflow:RUN_ID``, ``wandb:ID``:
    the run folder each tracker run recorded)."""
    from .tracking import run_folder_of

    runs = [run_folder_of(str(r)) if str(r).startswith(("mlflow:", "wandb:")) else Path(r) for r in runs]
    if not runs:
        raise VaelabError("give at least one run folder to compare")
    for r in runs:
        RunFolder(r).require()
    results = [_load_eval(r) for r in runs]
    names = [r.name for r in runs]
    rows = [headline(res) for res in results]
    metrics = []
    for row in rows:
        metrics += [m for m in row if m not in metrics]
    out = Path(out)
    (out / "grids").mkdir(parents=True, exist_ok=True)

    with open(out / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", *metrics])
        for name, row in zip(names, rows):
            writer.writerow([name, *[row.get(m, "") for m in metrics]])

    settings = [_settings_of(res) for res in results]
    unranked = {m: why for m in metrics if (why := not_comparable(m, results, settings, rows))}
    best = {m: set() if m in unranked else _best([row.get(m) for row in rows], better(m)) for m in metrics}

    for name, run in zip(names, runs):
        for src, suffix in ((run / "eval" / "samples.png", "samples"), (run / "curves.png", "curves")):
            if src.is_file():
                shutil.copy(src, out / "grids" / f"{name}-{suffix}.png")
    _bar_charts(names, rows, metrics, out / "metrics.png")
    space = next((m[len("precision_"):] for m in metrics if m.startswith("precision_")), None)
    _precision_recall_plot(names, rows, space, out / "precision_recall.png")
    _time_plot(names, rows, runs, space, out / "quality_vs_time.png")
    decided = verdict(names, rows, metrics, unranked, seed_groups(runs))

    md = ["# Comparison", "", f"{len(runs)} runs: " + ", ".join(f"`{r}`" for r in runs), "",
          "## Verdict", "", "| question | metric | best |", "|---|---|---|"]
    md += [f"| {axis} | {m} | {who} |" for axis, m, who in decided]
    md += ["", "![precision and recall](precision_recall.png) ![quality against training time](quality_vs_time.png)", "",
           "## All metrics", "",
           "Best value per metric in **bold** where the runs were measured alike (lower is better for FID, KID, MMD, "
           "MS-SSIM, MSE and bits/dim).", ""]
    md += ["| metric | " + " | ".join(names) + " | not ranked because |", "|---|" + "---|" * (len(names) + 1)]
    md.append("| sampler | " + " | ".join((res.get("sampler") or {"kind": "prior"})["kind"] for res in results)
              + " | where the latents came from (`vaelab evaluate --sampler`) |")
    for m in metrics:
        cells = [(f"**{format_value(row[m])}**" if i in best[m] else format_value(row[m])) if m in row else "" for i, row in enumerate(rows)]
        md.append(f"| {m} | " + " | ".join(cells) + f" | {unranked.get(m, '')} |")
    md += ["", "![metrics](metrics.png)", "", "## Samples", ""]
    md += [f"**{n}**\n\n![{n}](grids/{n}-samples.png)\n" for n in names if (out / "grids" / f"{n}-samples.png").is_file()]
    md += ["## Training curves", ""]
    md += [f"**{n}**\n\n![{n}](grids/{n}-curves.png)\n" for n in names if (out / "grids" / f"{n}-curves.png").is_file()]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "report.html", _html(names, rows, metrics, best, unranked, decided, out))
    return out


def _bar_charts(names, rows, metrics, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if sum(isinstance(r.get(m), (int, float)) for r in rows) >= 1][:16]
    if not shown:
        return
    cols = min(4, len(shown))
    nrows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, shown):
        values = [r.get(m, 0) or 0 for r in rows]
        ax.bar(range(len(names)), values, color="#4878a8")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _labelled_scatter(points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str, path: Path,
                      unit_square: bool = False) -> None:
    """One labelled point per run: points = [(name, x, y)]; nothing is written without points."""
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, x, y in points:
        ax.scatter(x, y, s=30)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if unit_square:
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _precision_recall_plot(names, rows, space: str | None, path: Path) -> None:
    """Precision against recall, one point per run: low precision = blur / off-manifold, low recall = mode collapse."""
    points = [(n, r[f"recall_{space}"], r[f"precision_{space}"]) for n, r in zip(names, rows)
              if space and f"precision_{space}" in r and f"recall_{space}" in r]
    _labelled_scatter(points, "recall (coverage; low = mode collapse)", "precision (fidelity; low = blur)",
                      f"precision and recall ({space} features, k = 3)", path, unit_square=True)


def _time_plot(names, rows, runs, space: str | None, path: Path) -> None:
    """FID against training seconds (summary.json), one point per run."""
    points = []
    for name, row, run in zip(names, rows, runs):
        summary = run / "summary.json"
        if space and f"fid_{space}" in row and summary.is_file():
            seconds = json.loads(summary.read_text()).get("train_seconds")
            if isinstance(seconds, (int, float)):
                points.append((name, seconds, row[f"fid_{space}"]))
    _labelled_scatter(points, "training time (s)", f"FID ({space} features; lower is better)",
                      "quality against training time", path)


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _html(names, rows, metrics, best, unranked, decided, out: Path) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for m in metrics:
        cells = []
        for i, row in enumerate(rows):
            text = html.escape(format_value(row[m])) if m in row else ""
            cells.append(f"<td><b>{text}</b></td>" if i in best[m] else f"<td>{text}</td>")
        why = html.escape(unranked.get(m, ""))
        body.append(f"<tr><th>{html.escape(m)}</th>{''.join(cells)}<td class=warn>{why}</td></tr>")
    verdict_rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(m)}</td><td>{html.escape(w)}</td></tr>"
                           for a, m, w in decided)
    grids = "".join(f"<figure>{_img(out / 'grids' / f'{n}-samples.png')}<figcaption>{html.escape(n)}</figcaption></figure>" for n in names)
    curves = "".join(f"<figure>{_img(out / 'grids' / f'{n}-curves.png')}<figcaption>{html.escape(n)}</figcaption></figure>" for n in names)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>vaelab comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
figure{{display:inline-block;margin:0.5em}}img{{image-rendering:pixelated;max-width:480px}}.warn{{color:#a40}}</style></head><body>
<h1>Comparison</h1><h2>Verdict</h2><table><tr><th>question</th><th>metric</th><th>best</th></tr>{verdict_rows}</table>
<p>{_img(out / 'precision_recall.png')} {_img(out / 'quality_vs_time.png')}</p>
<h2>All metrics</h2><p>Best value per metric in bold, where the runs were measured alike.</p>
<table><tr><th>metric</th>{head}<th>not ranked because</th></tr>{''.join(body)}</table>
<h2>Metrics</h2>{_img(out / 'metrics.png')}
<h2>Samples</h2>{grids}<h2>Training curves</h2>{curves}</body></html>
"""
