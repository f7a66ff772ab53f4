"""What an evaluation says: the headline numbers a comparison shows (``headline``), which way each is better
(``better``), the Markdown report of ``eval/report.md`` and its class histogram (``vaelab.evaluate`` writes them)."""

from __future__ import annotations

from pathlib import Path


def headline(result: dict) -> dict[str, float]:
    """The numbers a comparison table shows, flattened: name -> value."""
    row: dict[str, float] = {}
    lik = result.get("likelihood", {})
    for key in ("elbo_nats", "iwae_nats", "iwae_bits_per_dim", "reconstruction_mse_per_pixel", "kl_nats"):
        if key in lik:
            row[key] = lik[key]
    s = result.get("sample_metrics", {})
    if "mmd_pixels" in s:
        row["mmd_pixels"] = s["mmd_pixels"]["mmd2"]
        row["ms_ssim_samples"] = s["ms_ssim_samples"]["ms_ssim"]
    if "sharpness_samples" in s:
        row["sharpness"] = s["sharpness_samples"]
    for name, space in s.get("features", {}).items():
        tag = "clf" if name.startswith("classifier") else name
        for key in ("fid", "kid", "is", "precision", "recall", "coverage", "density"):
            if key in space:
                row[f"{key}_{tag}"] = space[key]
        for key, value in space.get("reconstructions", {}).items():
            row[f"recon_{key}_{tag}"] = value
        if "class_coverage" in space:
            row[f"classes_{tag}"] = space["class_coverage"]["classes_present"]
        if "conditional_accuracy" in space:  # conditional models: samples of class k classified as k
            row[f"label_accuracy_{tag}"] = space["conditional_accuracy"]
    util = result.get("synthetic_utility")
    if util:
        row["cas"] = util["classification_accuracy_score"]
        row["augmentation_gain"] = util["augmentation_gain"]
    return row


# Whether a larger value is better, for bolding the best entry of a comparison.
HIGHER_IS_BETTER = {
    "elbo_nats": True, "iwae_nats": True, "iwae_bits_per_dim": False, "reconstruction_mse_per_pixel": False,
    "kl_nats": None, "mmd_pixels": False, "ms_ssim_samples": False, "sharpness": True, "cas": True,
    "augmentation_gain": True,
}


def better(metric: str) -> bool | None:
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    if metric.startswith("label_accuracy"):
        return True
    base = metric.removeprefix("recon_").split("_")[0]
    # density: 1 where samples sit as densely as real images; neither more nor less is simply better
    return {"fid": False, "kid": False, "is": True, "precision": True, "recall": True, "coverage": True,
            "classes": True}.get(base)


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def report_markdown(result: dict) -> str:
    lines = [f"# Evaluation of `{result['run']}`", "",
             f"Model `{result['model']}` on {result['data']}; {result['real_images']} real {result['split']} images, "
             f"{result['samples']} samples, seed {result['seed']}; {result['seconds']:.1f} s.", ""]
    if "subsets" in result:
        sub = result["subsets"]
        lines += [f"Every real image and sample gives features (FID, KID, IS, classes); the pixel metrics use the "
                  f"first {sub['pixel_metrics_images']:,} of each, precision/recall and density/coverage up to "
                  f"{sub['pairwise_feature_images']:,}, MMD in features {sub['mmd_images']:,}, the real-data floor and "
                  f"memorisation {sub['train_images_embedded']:,} training images.", ""]
    lik = result.get("likelihood")
    if lik:
        s = lik["settings"]
        lines += ["## Likelihood", "",
                  f"{s['images']} images, K = {s['importance_samples']} importance samples, "
                  f"{'dynamically binarized (seed ' + str(s['seed']) + ')' if s['binarized'] else 'not binarized'}, "
                  f"likelihood `{s['likelihood']}`. Nats per image; bits per dimension over {s['dimensions']} dims.", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {format_value(v)} |" for k, v in lik.items() if k not in ("settings",)]
        lines.append("")
    s = result["sample_metrics"]
    lines += ["## Samples", ""]
    if "skipped" in s:
        lines += [f"Left out: {s['skipped']}.", ""]
    lines += ["| metric | samples | real |", "|---|---|---|"]
    if "mmd_pixels" in s:
        lines += [f"| MMD² on pixels (Gaussian kernel, bandwidth {s['mmd_pixels']['bandwidth']:.3g}, median heuristic) | "
                  f"{format_value(s['mmd_pixels']['mmd2'])} | |",
                  f"| MS-SSIM of random pairs ({s['ms_ssim_samples']['ms_ssim_scales']} scales, window "
                  f"{s['ms_ssim_samples']['ms_ssim_window']}, {s['ms_ssim_samples']['ms_ssim_pairs']} pairs; lower = more diverse) | "
                  f"{format_value(s['ms_ssim_samples']['ms_ssim'])} | {format_value(s['ms_ssim_real']['ms_ssim'])} |"]
    lines += [f"| sharpness (variance of the Laplacian) | {format_value(s['sharpness_samples'])} | {format_value(s['sharpness_real'])} |", ""]
    for name, space in s["features"].items():
        lines += [f"### Feature space `{name}`", "", "Settings: " + ", ".join(f"{k} = {v}" for k, v in space["settings"].items()), "",
                  "| metric | value |", "|---|---|"]
        for key in ("fid", "kid", "kid_std", "is", "is_std", "real_is", "precision", "recall", "coverage", "density",
                    "conditional_accuracy"):
            if key in space:
                lines.append(f"| {key} | {format_value(space[key])} |")
        lines.append(f"| MMD² (bandwidth {space['mmd']['bandwidth']:.3g}) | {format_value(space['mmd']['mmd2'])} |")
        for key, value in space.get("reconstructions", {}).items():
            lines.append(f"| reconstructions of the real images: {key} | {format_value(value)} |")
        if "class_coverage" in space:
            cc = space["class_coverage"]
            lines.append(f"| classes present (share >= {cc['class_presence_threshold']:.3g}) | {cc['classes_present']} of {cc['classes_total']} |")
            lines.append(f"| class histogram | {cc['class_histogram']} |")
        lines.append("")
    util = result.get("synthetic_utility")
    if util:
        lines += ["## Synthetic-data utility", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {format_value(v)} |" for k, v in util.items() if k != "settings"]
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in util["settings"].items()), ""]
    lines += ["![samples](samples.png)", ""]
    if any("class_coverage" in sp for sp in s["features"].values()):
        lines += ["![class histogram](class_histogram.png)", ""]
    return "\n".join(lines)


def plot_class_histogram(result: dict, out: Path) -> None:
    spaces = [sp for sp in result["sample_metrics"]["features"].values() if "class_coverage" in sp]
    if not spaces:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = spaces[0]["class_coverage"]["class_histogram"]
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(range(len(hist)), hist)
    ax.set_xlabel("predicted class of samples")
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(out / "class_histogram.png", dpi=110)
    plt.close(fig)
