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

from .data import SPLITS, load_data
from .errors import VaelabError
from .metrics import features as feats
from .metrics import samples as sm
from .metrics.likelihood import likelihood_metrics
from .processes import barrier, is_main_process, join_processes, launched_processes, map_chunks, rank_and_world, stream_seed
from .evaluation_report import plot_class_histogram, report_markdown
from .run import RunFolder, atomic_write_text, resolve_device
from .samplers import load


def _resolve_features(specs: list[str], run_cfg, data, inception_weights, download, progress, device) -> list:
    extractors = []
    for spec in specs:
        if spec == "auto":
            if data.train.labels is not None and data.num_classes >= 2:
                if is_main_process():
                    feats.cached_classifier(data, run_cfg.data, progress, device)
                barrier()  # the other processes load what the main process trained
                folder = feats.classifier_folder_for(run_cfg.data)
                extractors.append(feats.ClassifierExtractor(folder, device))
            if feats.inception_weights_path(inception_weights) is not None or download:
                extractors.append(feats.InceptionExtractor(inception_weights, download, device))
        else:
            extractors.append(feats.make_extractor(spec, inception_weights, download, device))
    return extractors


def sample_labels(model, n: int, num_classes: int) -> torch.Tensor | None:
    """The classes (n,) a conditional model's n samples are drawn with (uniform, in turn); None otherwise."""
    return torch.arange(n) % num_classes if model.is_conditional else None


# where each split's draws start in a seed stream (chunk numbers): a setting chosen on the validation split's draws
# is then reported on the test split's with other latents, never the same ones
SPLIT_FIRST_CHUNK = {"test": 0, "validation": 333_334, "train": 666_668}


def generate(model, n: int, seed: int, num_classes: int, stream: str = "evaluate_samples", first_chunk: int = 0):
    """n samples (float (n, C, H, W) in [0, 1]) and their labels for conditional models (uniform over classes).

    Chunks of ``CHUNK`` are seeded by their index in seed stream ``stream`` (never the training-time score's draws)
    and split across processes under torchrun (every process gets all n, the same set as one process draws)."""
    labels = sample_labels(model, n, num_classes)
    return torch.cat(map_chunks(_sample_maker(model, n, seed, num_classes, stream, first_chunk),
                                math.ceil(n / CHUNK))), labels


UTILITY_IMAGES = 20_000  # generated images the utility's classifiers train on at most (their steps are capped too)


def synthetic_utility(model, data, seed: int, progress: bool, epochs: int = 10, generated=None,
                      split: str = "test") -> dict:
    """Classification accuracy score (train on generated, test on real) and the augmentation gain of generated
    data over a 10% real subset, for conditional models on labelled data (Ravuri & Vinyals 2019), measured on the
    evaluated ``split``'s images.

    ``generated``: (uint8 images, labels) from ``generate_uint8(model, min(len(train), UTILITY_IMAGES), seed,
    classes, stream="utility", first_chunk=SPLIT_FIRST_CHUNK[split])``, drawn here if None. The real images are read a batch at a time."""
    from .data.splits import ImageSet, _take

    k = data.num_classes
    real, test = data.train, data.split(split)
    fake_pixels, fake_y = generated or generate_uint8(model, min(len(real), UTILITY_IMAGES), seed, k,
                                                      stream="utility", first_chunk=SPLIT_FIRST_CHUNK[split])
    fake = ImageSet(images=fake_pixels, labels=fake_y)
    steps_per_epoch = max(1, len(real) // 128)

    def fit(images):  # the same number of optimizer steps for every training set, however small
        rounds = max(1, math.ceil(epochs * steps_per_epoch / max(1, len(images) // 128)))
        return feats.train_classifier(images, images.labels, k, epochs=rounds, seed=seed, x_test=test,
                                      y_test=test.labels, device=model.device)[1]["test_accuracy"]

    gen = torch.Generator().manual_seed(seed)
    subset = _take(real, torch.randperm(len(real), generator=gen)[: max(k, len(real) // 10)].numpy())
    small_pixels = subset.take(torch.arange(len(subset))).cpu()
    augmented = ImageSet(images=torch.cat([small_pixels, fake_pixels]), labels=torch.cat([subset.labels, fake_y]))
    if progress:
        print("synthetic-data utility: training 4 classifiers", flush=True)
    real_acc = fit(real)
    cas = fit(fake)
    small = fit(subset)
    plus = fit(augmented)
    return {
        "classification_accuracy_score": cas, "real_data_accuracy": real_acc,
        "subset_10pct_accuracy": small, "subset_10pct_plus_generated_accuracy": plus,
        "augmentation_gain": plus - small,
        "settings": {"generated_images": len(fake), "subset_images": len(subset),
                     "classifier_steps": epochs * steps_per_epoch, "test_split": split,
                     "test_images": min(len(test), feats.ACCURACY_IMAGES)},
    }


def generate_uint8(model, n: int, seed: int, num_classes: int, stream: str = "utility", first_chunk: int = 0):
    """``generate``'s draws held as uint8 (n, C, H, W) (a quarter of float32's memory) and their labels."""
    make = _sample_maker(model, n, seed, num_classes, stream, first_chunk)
    to_uint8 = lambda x: (x * 255).round().clamp(0, 255).to(torch.uint8)
    labels = sample_labels(model, n, num_classes)
    return torch.cat(map_chunks(lambda i: to_uint8(make(i)), math.ceil(n / CHUNK))), labels


# Precision/recall's k-NN balls (k = 3) need k + 1 points in each set; FID, KID, MMD and MS-SSIM need 2
MIN_SET_SIZE = 4
# What evaluate holds, whatever the split's size (each recorded in metrics.json's "subsets"): features of every real
# image and sample (FID, KID, IS and classes use them all), pixels of the first PIXEL_IMAGES of each set (MMD and
# MS-SSIM on pixels, sharpness, the pixel memorisation check), PAIRWISE_IMAGES of each for the k-NN metrics
# (precision/recall, density/coverage: quadratic in the images) and MMD_IMAGES for MMD in feature space; the
# real-data floor and the feature memorisation check against TRAIN_IMAGES training images, the pixel check against
# PIXEL_MEMORISATION_TRAIN (spread over the training split)
CHUNK = 500
PIXEL_IMAGES = 2_000
PAIRWISE_IMAGES = 10_000
MMD_IMAGES = 2_000
TRAIN_IMAGES = 20_000
PIXEL_MEMORISATION_TRAIN = 10_000


def _split_reader(split, count: int, spaced: bool = False):
    """i -> float (<= CHUNK, C, H, W) in [0, 1]: chunk i of the first ``count`` images of a split (``spaced``: of
    ``count`` spread over it)."""
    from .data import spaced_indices

    idx = spaced_indices(len(split), count) if spaced else torch.arange(min(count, len(split)))
    return lambda i: split.take(idx[i * CHUNK : (i + 1) * CHUNK]).float().cpu() / 255.0


def _sample_maker(model, n: int, seed: int, num_classes: int, stream: str = "evaluate_samples", first_chunk: int = 0):
    """i -> chunk i of ``generate(model, n, seed, num_classes, stream, first_chunk)``'s samples (a chunk at a
    time, seeded by chunk number ``first_chunk + i`` of the stream)."""
    labels = sample_labels(model, n, num_classes)

    @torch.no_grad()
    def chunk(i: int) -> torch.Tensor:
        y = None if labels is None else labels[i * CHUNK : (i + 1) * CHUNK].to(model.device)
        gen = torch.Generator().manual_seed(stream_seed(stream, seed, first_chunk + i))
        return model.sample(min(CHUNK, n - i * CHUNK), y=y, generator=gen).float().cpu()

    return chunk


def _reconstruction_maker(model, split):
    """i -> the model's reconstructions of chunk i of a split (its posterior means decoded)."""
    read = _split_reader(split, len(split))

    @torch.no_grad()
    def chunk(i: int) -> torch.Tensor:
        x = read(i)
        y = None if split.labels is None or not model.is_conditional else \
            split.labels[i * CHUNK : i * CHUNK + len(x)].to(model.device)
        return model.reconstruct(x.to(model.device), y).float().cpu()

    return chunk


def _embedded_stream(extractors: list, make_chunk, total: int, what: str | None, keep_pixels: int = PIXEL_IMAGES):
    """Chunks ``make_chunk(i)`` of ``total`` images, split across processes under torchrun: per extractor (features
    (total, d), logits (total, K) or None), and the pixels of the first ``keep_pixels`` images."""
    from contextlib import nullcontext

    from .progress import Phase

    count = math.ceil(total / CHUNK)
    with Phase(what, total) if what else nullcontext() as phase:
        def compute(i: int):
            x = make_chunk(i)
            if phase is not None:
                phase.advance(len(x))
            return [ex.embed(x) for ex in extractors], (x if i * CHUNK < keep_pixels else None)

        parts = map_chunks(compute, count)
    embedded = [(torch.cat([p[0][j][0] for p in parts]) if parts else torch.zeros(0),
                 torch.cat([p[0][j][1] for p in parts]) if parts and ex.has_logits else None)
                for j, ex in enumerate(extractors)]
    kept = [p[1] for p in parts if p[1] is not None]
    return embedded, (torch.cat(kept)[:keep_pixels] if kept else torch.zeros(0))


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
        note = getattr(model, "sampler_note", None)
        return {"kind": "prior", **({"note": note} if note else {})}
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
        pairwise = slice(0, PAIRWISE_IMAGES)  # k-NN balls are quadratic in the images: a stated subset
        space.update(sm.precision_recall(f_real[pairwise], f_fake[pairwise], k=3))
        space["mmd"] = sm.mmd(f_real[:MMD_IMAGES], f_fake[:MMD_IMAGES])
        if recon is not None:
            # rFID (as autoencoders are judged, e.g. Esser et al. 2021): the decoder's quality on codes the encoder
            # gives. A sample FID far above it points at the prior's coverage, not at the decoder
            pr = sm.precision_recall(f_real[pairwise], recon[0][pairwise], k=3)
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
             utility: bool = True, utility_epochs: int = 10, seed: int = 0, device: str = "auto",
             progress: bool = True, weights: str = "best", sampler: str | None = None) -> dict | None:
    """Measure one run; returns the metrics dict and writes RUN/eval/.

    Under torchrun / accelerate launch the likelihood batches, the samples and their features are split across
    the processes and gathered, with the same result as one process; the main process alone computes the
    set-level metrics and writes RUN/eval/ (the others return None)."""
    start = time.perf_counter()
    if split not in SPLITS:
        raise VaelabError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = RunFolder(run)
    device = str(join_processes(device)[0] if launched_processes() > 1 else resolve_device(device))
    main = is_main_process()
    model = load(run, device=device, weights=weights, sampler=sampler)
    cfg = model.run_config
    data = load_data(cfg.data)
    part = data.split(split)
    if len(part) == 0:
        raise VaelabError(f"the {split} split of {data.description} is empty (data.validation_fraction="
                          f"{cfg.data.validation_fraction}; runs made before vaelab held out validation images have "
                          f"none); evaluate --split test")
    y_real = part.labels
    n = num_samples or len(part)
    from .samplers.base import file_sha256

    result: dict = {"run": str(run), "weights": model.weights_file,
                    "weights_sha256": file_sha256(Path(run) / model.weights_file), "model": model.registry_name,
                    "conditional": model.is_conditional,
                    "precision": "fp32",  # evaluation never autocasts, whatever the training precision was
                    "image_shape": list(model.image_shape),
                    "data": data.description, "split": split,
                    "real_images": len(part), "samples": n, "seed": seed, "seed_stream": "evaluate_samples",
                    "seed_first_chunk": SPLIT_FIRST_CHUNK[split],
                    "sampler": _sampler_record(model),
                    "subsets": {"pixel_metrics_images": min(PIXEL_IMAGES, len(part), n),
                                "pairwise_feature_images": PAIRWISE_IMAGES, "mmd_images": MMD_IMAGES,
                                "train_images_embedded": min(TRAIN_IMAGES, len(data.train)) if split != "train" else 0,
                                "rule": "the first images of each set (real and samples alike); training images "
                                        "spread evenly over the split"}}

    if model.has_encoder:
        result["likelihood"] = likelihood_metrics(model, part, k=k, binarized=binarized, seed=seed,
                                                  progress=progress)

    extractors = _resolve_features(list(features), cfg, data, inception_weights, download, progress and main,
                                   model.device)
    say = progress and main
    # every set is read, drawn and embedded a chunk at a time; only features and a capped set of pixels are kept
    real_emb, x_real = _embedded_stream(extractors, _split_reader(part, len(part)), len(part),
                                        "embedding the real images" if say else None)
    fake_emb, fake = _embedded_stream(extractors, _sample_maker(model, n, seed, max(1, data.num_classes),
                                                                first_chunk=SPLIT_FIRST_CHUNK[split]), n,
                                      "drawing and embedding the samples" if say else None)
    fake_labels = sample_labels(model, n, max(1, data.num_classes))
    recon_emb, recon = (None, None)
    if model.has_encoder:
        recon_emb, recon = _embedded_stream(extractors, _reconstruction_maker(model, part), len(part),
                                            "reconstructing and embedding the real images" if say else None)
    train_emb = None
    if split != "train":  # the memorisation check's reference, and the real-data floor
        count = min(TRAIN_IMAGES, len(data.train))
        train_emb, _ = _embedded_stream(extractors, _split_reader(data.train, count, spaced=True), count,
                                        "embedding the training images" if say else None, keep_pixels=0)
    embedded = {ex: (real_emb[i], fake_emb[i], None if recon_emb is None else recon_emb[i],
                     None if train_emb is None else train_emb[i]) for i, ex in enumerate(extractors)}
    generated = None
    if utility and model.is_conditional and data.train.labels is not None:
        generated = generate_uint8(model, min(len(data.train), UTILITY_IMAGES), seed, data.num_classes,
                                   stream="utility", first_chunk=SPLIT_FIRST_CHUNK[split])
    if not main:
        return None

    samples: dict = {"sharpness_samples": sm.sharpness(fake), "sharpness_real": sm.sharpness(x_real)}
    if min(len(part), n) < MIN_SET_SIZE:
        samples["skipped"] = (f"the set-level metrics (FID, KID, IS, MMD, MS-SSIM, precision/recall, classes) need at "
                              f"least {MIN_SET_SIZE} real images and {MIN_SET_SIZE} samples; the {split} split has "
                              f"{len(part)} and {n} samples were drawn")
        warnings.warn(samples["skipped"] + ": left out (evaluate a larger folder, or --split train)")
        embedded = {}
    else:
        samples.update(_set_metrics(x_real, fake, len(fake), seed))
        if split != "train" and len(data.train) >= 1:
            count = min(PIXEL_MEMORISATION_TRAIN, len(data.train))
            reader = _split_reader(data.train, count, spaced=True)
            samples["memorisation_pixels"] = sm.memorisation(
                fake, lambda: (reader(i) for i in range(math.ceil(count / CHUNK))), x_real, recon)
    samples["features"] = _feature_metrics(embedded, fake_labels, seed)
    result["sample_metrics"] = samples

    if generated is not None:
        result["synthetic_utility"] = synthetic_utility(model, data, seed, progress, utility_epochs, generated, split)
    result["seconds"] = time.perf_counter() - start
    result["processes"] = rank_and_world()[1]

    out = folder.path / "eval"
    out.mkdir(exist_ok=True)
    save_image(fake[:64], out / "samples.png", nrow=8, padding=1)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "report.md", report_markdown(result))
    plot_class_histogram(result, out)
    return result
