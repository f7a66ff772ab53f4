"""``vaelab evaluate``: every metric of the field for one run, with the settings each was measured with.

Reads the run folder (model + config naming its data) and writes RUN/eval/metrics.json, RUN/eval/report.md and
plots. Feature spaces: ``auto`` uses a domain classifier for labelled data (trained once into
the user's cache directory if none is given), Inception when its weights are on disk, and pixels always.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
from torchvision.utils import save_image

from .data import SPLITS, first_images, load_data
from .errors import VaelabError
from .metrics import features as feats
from .metrics import samples as sm
from .metrics.likelihood import likelihood_metrics
from .processes import barrier, is_main_process, join_processes, launched_processes, map_chunks, rank_and_world, stream_seed
from .run import RunFolder, atomic_write_text
from .samplers import load
from .sampling import reconstruct_all


def _resolve_features(specs: list[str], run_cfg, data, inception_weights, download, progress) -> list:
    extractors = []
    for spec in specs:
        if spec == "auto":
            if data.train.labels is not None and data.num_classes >= 2:
                if is_main_process():
                    feats.cached_classifier(data, run_cfg.data, progress)
                barrier()  # the other processes load what the main process trained
                folder = feats.classifier_folder_for(run_cfg.data)
                extractors.append(feats.ClassifierExtractor(folder))
            if feats.inception_weights_path(inception_weights) is not None or download:
                extractors.append(feats.InceptionExtractor(inception_weights, download))
        else:
            extractors.append(feats.make_extractor(spec, inception_weights, download))
    return extractors


@torch.no_grad()
def generate(model, n: int, seed: int, num_classes: int, batch: int = 500, stream: str = "evaluate_samples"):
    """n samples (float (n, C, H, W) in [0, 1]) and their labels for conditional models (uniform over classes).

    Chunks of ``batch`` are seeded by their index in seed stream ``stream`` (never the training-time score's draws)
    and split across processes under torchrun (every process gets all n, the same set as one process draws)."""
    labels = torch.arange(n) % num_classes if model.is_conditional else None

    def chunk(i: int) -> torch.Tensor:
        y = None if labels is None else labels[i * batch : (i + 1) * batch].to(model.device)
        gen = torch.Generator().manual_seed(stream_seed(stream, seed, i))
        return model.sample(min(batch, n - i * batch), y=y, generator=gen).float().cpu()

    return torch.cat(map_chunks(chunk, math.ceil(n / batch))), labels


@torch.no_grad()
def embed(extractor, x: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features (N, d), logits (N, K) or None) of images x in one pass, split across processes under torchrun."""
    parts = map_chunks(lambda i: extractor.embed(x[i * batch : (i + 1) * batch]), math.ceil(len(x) / batch))
    features = torch.cat([f for f, _ in parts])
    return features, (torch.cat([l for _, l in parts]) if extractor.has_logits else None)


def synthetic_utility(model, data, seed: int, progress: bool, epochs: int = 10, generated=None) -> dict:
    """Classification accuracy score (train on generated, test on real) and the augmentation gain of generated
    data over a 10% real subset, for conditional models on labelled data (Ravuri & Vinyals 2019).

    ``generated``: (images, labels) from ``generate(model, len(train), seed, classes, stream="utility")``, drawn here
    if None."""
    k = data.num_classes
    x_train, y_train = first_images(data.train, len(data.train)), data.train.labels
    x_test, y_test = first_images(data.test, len(data.test)), data.test.labels
    fake, fake_y = generated or generate(model, len(x_train), seed, k, stream="utility")
    steps_per_epoch = max(1, len(x_train) // 128)

    def fit(x, y):  # the same number of optimizer steps for every training set, however small
        rounds = max(1, math.ceil(epochs * steps_per_epoch / max(1, len(x) // 128)))
        return feats.train_classifier(x, y, k, epochs=rounds, seed=seed, x_test=x_test, y_test=y_test)[1]["test_accuracy"]

    gen = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(x_train), generator=gen)[: max(k, len(x_train) // 10)]
    if progress:
        print("synthetic-data utility: training 4 classifiers", flush=True)
    real_acc = fit(x_train, y_train)
    cas = fit(fake, fake_y)
    small = fit(x_train[subset], y_train[subset])
    augmented = fit(torch.cat([x_train[subset], fake]), torch.cat([y_train[subset], fake_y]))
    return {
        "classification_accuracy_score": cas, "real_data_accuracy": real_acc,
        "subset_10pct_accuracy": small, "subset_10pct_plus_generated_accuracy": augmented,
        "augmentation_gain": augmented - small,
        "settings": {"generated_images": len(fake), "subset_images": len(subset),
                     "classifier_steps": epochs * steps_per_epoch,
                     "test_images": len(x_test)},
    }


# Precision/recall's k-NN balls (k = 3) need k + 1 points in each set; FID, KID, MMD and MS-SSIM need 2
MIN_SET_SIZE = 4


def _set_metrics(x_real: torch.Tensor, fake: torch.Tensor, n: int, seed: int) -> dict:
    """MMD on pixels and MS-SSIM diversity of the samples and of the real images; x_real, fake (N, C, H, W)."""
    return {"mmd_pixels": sm.mmd(x_real.flatten(1), fake.flatten(1)),
            "ms_ssim_samples": sm.ms_ssim_diversity(fake, pairs=min(1000, n * 2), seed=seed),
            "ms_ssim_real": sm.ms_ssim_diversity(x_real, pairs=min(1000, n * 2), seed=seed)}


def _sampler_record(model) -> dict:
    """Which latent sampler the sample side drew from, with the settings it was fitted and chosen with."""
    if not model.has_encoder:
        return {"kind": "none: the model's own prior (no encoder)"}
    fitted = model.latent_sampler
    if fitted is None:
        return {"kind": "prior"}
    keep = {k: v for k, v in fitted.settings.items() if k not in ("selection", "class_names")}
    return {"kind": model.sampler_kind, **keep}


def _feature_metrics(embedded: dict, fake_labels, seed: int) -> dict:
    """Per feature space: FID, KID, precision/recall, MMD, and from logits IS, classes and label accuracy; the
    real-data floor (training against the real images) and the memorisation check (samples' nearest-neighbour
    distance to the training images against the real images' own) where the training images are embedded; for a
    model with an encoder also FID and precision/recall of its reconstructions of the real images."""
    spaces = {}
    for extractor, ((f_real, logits_real), (f_fake, logits), recon, train) in embedded.items():
        space = {"settings": dict(extractor.settings)}
        space["fid"] = sm.fid(f_real, f_fake)
        if train is not None:
            # the floor: training images against the same real images, as many as the samples are compared with
            # (spread over the split); every FID reads as a multiple of it. And whether samples copy training images
            floor = train[0][torch.linspace(0, len(train[0]) - 1, min(len(f_real), len(train[0]))).long()]
            space["real_data_floor_fid"] = sm.fid(f_real, floor)
            space["memorisation"] = sm.memorisation(f_fake, train[0], f_real, None if recon is None else recon[0])
        space.update(sm.kid(f_real, f_fake, seed=seed))
        space.update(sm.precision_recall(f_real, f_fake, k=3))
        space["mmd"] = sm.mmd(f_real, f_fake)
        if recon is not None:
            # rFID (as autoencoders are judged, e.g. Esser et al. 2021): the decoder's quality on codes the encoder
            # gives. A sample FID far above it points at the prior's coverage, not at the decoder
            pr = sm.precision_recall(f_real, recon[0], k=3)
            space["reconstructions"] = {"fid": sm.fid(f_real, recon[0]), "precision": pr["precision"],
                                        "recall": pr["recall"]}
        if logits is not None:
            space.update(sm.inception_score(logits, seed=seed))
            if isinstance(extractor, feats.ClassifierExtractor):
                space["class_coverage"] = sm.class_coverage(logits, logits.shape[1])
                if fake_labels is not None:
                    space["conditional_accuracy"] = float((logits.argmax(1) == fake_labels).double().mean())
                space["real_is"] = sm.inception_score(logits_real, seed=seed)["is"]
        spaces[extractor.name] = space
    return spaces


def evaluate(run: str | Path, split: str = "test", num_samples: int | None = None, features: list[str] = ("auto",),
             k: int = 1000, binarized: bool = False, inception_weights: str | None = None, download: bool = False,
             utility: bool = True, utility_epochs: int = 10, seed: int = 0, device: str = "cpu",
             progress: bool = True, weights: str = "best", sampler: str | None = None) -> dict | None:
    """Measure one run; returns the metrics dict and writes RUN/eval/.

    Under torchrun / accelerate launch the likelihood batches, the samples and their features are split across
    the processes and gathered, with the same result as one process; the main process alone computes the
    set-level metrics and writes RUN/eval/ (the others return None)."""
    start = time.perf_counter()
    if split not in SPLITS:
        raise VaelabError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = RunFolder(run)
    if launched_processes() > 1:
        device = str(join_processes(device)[0])
    main = is_main_process()
    model = load(run, device=device, weights=weights, sampler=sampler)
    cfg = model.run_config
    data = load_data(cfg.data)
    part = data.split(split)
    if len(part) == 0:
        raise VaelabError(f"the {split} split of {data.description} is empty (data.validation_fraction="
                          f"{cfg.data.validation_fraction}; runs made before vaelab held out validation images have "
                          f"none); evaluate --split test")
    x_real = first_images(part, len(part))
    y_real = part.labels
    n = num_samples or len(x_real)
    result: dict = {"run": str(run), "weights": model.weights_file, "model": model.registry_name,
                    "conditional": model.is_conditional,
                    "precision": "fp32",  # evaluation never autocasts, whatever the training precision was
                    "image_shape": list(model.image_shape),
                    "data": data.description, "split": split,
                    "real_images": len(x_real), "samples": n, "seed": seed, "seed_stream": "evaluate_samples",
                    "sampler": _sampler_record(model)}

    if model.has_encoder:
        result["likelihood"] = likelihood_metrics(model, x_real, y_real, k=k, binarized=binarized, seed=seed,
                                                  progress=progress)

    fake, fake_labels = generate(model, n, seed, max(1, data.num_classes))
    recon = reconstruct_all(model, x_real, y_real) if model.has_encoder else None
    # the training images: the memorisation check's reference, and (as many as the real images) the real-data floor
    x_train = first_images(data.train, len(data.train)) if split != "train" else None
    embedded = {}
    for extractor in _resolve_features(list(features), cfg, data, inception_weights, download, progress and main):
        embedded[extractor] = (embed(extractor, x_real), embed(extractor, fake),
                               None if recon is None else embed(extractor, recon),
                               None if x_train is None else embed(extractor, x_train))
    generated = None
    if utility and model.is_conditional and data.train.labels is not None:
        generated = generate(model, len(data.train), seed, data.num_classes, stream="utility")
    if not main:
        return None

    samples: dict = {"sharpness_samples": sm.sharpness(fake), "sharpness_real": sm.sharpness(x_real)}
    if min(len(x_real), n) < MIN_SET_SIZE:
        samples["skipped"] = (f"the set-level metrics (FID, KID, IS, MMD, MS-SSIM, precision/recall, classes) need at "
                              f"least {MIN_SET_SIZE} real images and {MIN_SET_SIZE} samples; the {split} split has "
                              f"{len(x_real)} and {n} samples were drawn")
        warnings.warn(samples["skipped"] + ": left out (evaluate a larger folder, or --split train)")
        embedded = {}
    else:
        samples.update(_set_metrics(x_real, fake, n, seed))
        if x_train is not None and len(x_train) >= 1:
            samples["memorisation_pixels"] = sm.memorisation(fake, x_train, x_real, recon)
    samples["features"] = _feature_metrics(embedded, fake_labels, seed)
    result["sample_metrics"] = samples

    if generated is not None:
        result["synthetic_utility"] = synthetic_utility(model, data, seed, progress, utility_epochs, generated)
    result["seconds"] = time.perf_counter() - start
    result["processes"] = rank_and_world()[1]

    out = folder.path / "eval"
    out.mkdir(exist_ok=True)
    save_image(fake[:64], out / "samples.png", nrow=8, padding=1)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "report.md", report_markdown(result))
    _plot_class_histogram(result, out)
    return result


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


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def report_markdown(result: dict) -> str:
    lines = [f"# Evaluation of `{result['run']}`", "",
             f"Model `{result['model']}` on {result['data']}; {result['real_images']} real {result['split']} images, "
             f"{result['samples']} samples, seed {result['seed']}; {result['seconds']:.1f} s.", ""]
    lik = result.get("likelihood")
    if lik:
        s = lik["settings"]
        lines += ["## Likelihood", "",
                  f"{s['images']} images, K = {s['importance_samples']} importance samples, "
                  f"{'dynamically binarized (seed ' + str(s['seed']) + ')' if s['binarized'] else 'not binarized'}, "
                  f"likelihood `{s['likelihood']}`. Nats per image; bits per dimension over {s['dimensions']} dims.", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in lik.items() if k not in ("settings",)]
        lines.append("")
    s = result["sample_metrics"]
    lines += ["## Samples", ""]
    if "skipped" in s:
        lines += [f"Left out: {s['skipped']}.", ""]
    lines += ["| metric | samples | real |", "|---|---|---|"]
    if "mmd_pixels" in s:
        lines += [f"| MMD² on pixels (Gaussian kernel, bandwidth {s['mmd_pixels']['bandwidth']:.3g}, median heuristic) | "
                  f"{_fmt(s['mmd_pixels']['mmd2'])} | |",
                  f"| MS-SSIM of random pairs ({s['ms_ssim_samples']['ms_ssim_scales']} scales, window "
                  f"{s['ms_ssim_samples']['ms_ssim_window']}, {s['ms_ssim_samples']['ms_ssim_pairs']} pairs; lower = more diverse) | "
                  f"{_fmt(s['ms_ssim_samples']['ms_ssim'])} | {_fmt(s['ms_ssim_real']['ms_ssim'])} |"]
    lines += [f"| sharpness (variance of the Laplacian) | {_fmt(s['sharpness_samples'])} | {_fmt(s['sharpness_real'])} |", ""]
    for name, space in s["features"].items():
        lines += [f"### Feature space `{name}`", "", "Settings: " + ", ".join(f"{k} = {v}" for k, v in space["settings"].items()), "",
                  "| metric | value |", "|---|---|"]
        for key in ("fid", "kid", "kid_std", "is", "is_std", "real_is", "precision", "recall", "coverage", "density",
                    "conditional_accuracy"):
            if key in space:
                lines.append(f"| {key} | {_fmt(space[key])} |")
        lines.append(f"| MMD² (bandwidth {space['mmd']['bandwidth']:.3g}) | {_fmt(space['mmd']['mmd2'])} |")
        for key, value in space.get("reconstructions", {}).items():
            lines.append(f"| reconstructions of the real images: {key} | {_fmt(value)} |")
        if "class_coverage" in space:
            cc = space["class_coverage"]
            lines.append(f"| classes present (share >= {cc['class_presence_threshold']:.3g}) | {cc['classes_present']} of {cc['classes_total']} |")
            lines.append(f"| class histogram | {cc['class_histogram']} |")
        lines.append("")
    util = result.get("synthetic_utility")
    if util:
        lines += ["## Synthetic-data utility", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in util.items() if k != "settings"]
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in util["settings"].items()), ""]
    lines += ["![samples](samples.png)", ""]
    if any("class_coverage" in sp for sp in s["features"].values()):
        lines += ["![class histogram](class_histogram.png)", ""]
    return "\n".join(lines)


def _plot_class_histogram(result: dict, out: Path) -> None:
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
