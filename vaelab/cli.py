"""The ``vaelab`` command: one small function per verb, each calling the library."""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .errors import VaelabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, compare, evaluate and explore VAE-family image generators. Every command after `train` reads only the run folder.",
)


def _fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _say(message: str) -> None:
    """Print on the main process only (under torchrun every process runs this command)."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(message)


def _decided_by_rank_zero(device: str, decide):
    """``decide()`` on rank 0, its answer on every process: all processes of a torchrun launch must use one run
    folder, and checking for an existing one races with rank 0 creating it."""
    from .processes import launched_processes

    if launched_processes() == 1:
        return decide()
    import torch.distributed as dist

    from .train import join_processes

    _, rank, _ = join_processes(device)
    answer = [decide() if rank == 0 else None]
    dist.broadcast_object_list(answer, src=0)
    return answer[0]


def user_errors(fn):
    """Turn VaelabError into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.simplefilter("default")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
        try:
            result = fn(*args, **kwargs)
        except VaelabError as exc:
            _fail(str(exc))
        from .processes import leave_process_group

        leave_process_group()  # under torchrun: every process finishes together
        return result

    return wrapper


def _unique_run_dir(base: Path) -> Path:
    if not base.exists() or not any(base.iterdir()):
        return base
    for i in range(2, 10_000):
        candidate = base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    _fail(f"too many runs named {base}*; pass --out")


@app.command()
@user_errors
def train(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="a preset name (see `vaelab presets`); default vae-mnist"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="a YAML config file instead of a preset"),
    overrides: List[str] = typer.Option([], "--set", "-s", help="override a key: --set model.latent_dim=32 (repeatable)"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset: mnist5k, digits, folder:PATH, mnist, cifar10, celeba, ..."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="where torchvision datasets live"),
    download: bool = typer.Option(False, "--download", help="download a torchvision dataset if it is missing"),
    strict: bool = typer.Option(False, "--strict", help="a corrupt image file is an error instead of a skipped file"),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help="number of epochs (with --resume: the new total)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (bf16 where the CPU/GPU runs it natively) | fp32 | bf16 | fp16"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N | mps"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="stop cleanly after this much training: 90s, 10m, 1h"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many optimizer steps"),
    on_nan: Optional[str] = typer.Option(None, "--on-nan", help="stop | rollback (restore the last checkpoint, halve the lr, go on)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/<preset>, made unique)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this folder from its newest checkpoint"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="one run per value: --sweep model.latent_dim=100,500,1000"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
):
    """Train a model into a run folder (config, weights, checkpoints, samples, metrics)."""
    from .config import apply_overrides, build_config, read_config_file, read_preset
    from .run import RunFolder
    from .train import train as run_training

    cli_sets = list(overrides)
    for key, value in (("data.name", data), ("data.root", data_root), ("train.epochs", epochs),
                       ("train.batch_size", batch_size), ("train.precision", precision), ("train.device", device),
                       ("train.seed", seed), ("train.time_budget", time_budget), ("train.max_steps", max_steps),
                       ("train.on_nan", on_nan)):
        if value is not None:
            cli_sets.append(f"{key}={value}")
    if download:
        cli_sets.append("data.download=true")
    if strict:
        cli_sets.append("data.strict=true")

    if sweep is not None:
        if resume is not None or out is not None:
            _fail("--sweep names its own run folders (runs/<name>-<key>-<value>); drop --resume/--out")
        _train_sweep(sweep, preset, config, cli_sets, progress)
        return
    if resume is not None:
        if preset or config or data:
            _fail("--resume continues a run with its own config; drop --preset/--config/--data")
        changed = [s.split("=", 1)[0] for s in cli_sets if not s.startswith("train.")]
        if changed:
            _fail(f"--resume can only change train.* settings, not {', '.join(changed)}")
        run = RunFolder(resume)
        cfg = run.read_config()
        raw = apply_overrides(cfg.to_dict(), cli_sets)
        cfg = build_config(raw)
        target, resuming = resume, bool(run.checkpoints())
        if not resuming:
            typer.echo(f"{resume} has no checkpoint yet; starting it from the beginning")
    else:
        raw = read_config_file(config) if config else read_preset(preset or "vae-mnist")
        cfg = build_config(apply_overrides(raw, cli_sets))

        def new_run_folder() -> Path:
            if out is None:
                return _unique_run_dir(Path("runs") / cfg.name)
            if RunFolder(out).exists():
                _fail(f"{out} already holds a run; continue it with `vaelab train --resume {out}` or choose another --out")
            return out

        target = _decided_by_rank_zero(cfg.train.device, new_run_folder)
        resuming = False
    _say(f"training {cfg.model.name} ({cfg.name}) on {cfg.data.name} -> {target}")
    # a preset's batch size is a default, shrunk to fit a small folder; one the user gave is kept (or an error)
    chosen = config is not None or resume is not None or any(s.startswith("train.batch_size=") for s in cli_sets)
    summary = run_training(cfg, target, resume=resuming, progress=progress, adapt_batch_size=not chosen)
    if summary.get("interrupted"):
        _say(f"interrupted at step {summary['step']}; checkpoint saved. Continue with: vaelab train --resume {target}")
        raise typer.Exit(130)
    line = f"done: {summary['steps']} steps, {summary['images_per_s']:.0f} images/s, {summary['train_seconds']:.1f} s"
    lik = summary.get("likelihood") or {}
    if "elbo_nats" in lik:
        line += (f"\ntest ELBO {lik['elbo_nats']:.2f} nats/image ({lik['elbo_bits_per_dim']:.4f} bits/dim; "
                 f"reconstruction {lik['reconstruction_nll_nats']:.2f}, KL {lik['kl_nats']:.2f}) on "
                 f"{lik['settings']['images']} test images (fp32; the definitions of `vaelab evaluate`)")
    elif "reconstruction_loss" in lik:
        line += f"\ntest loss {lik['reconstruction_loss'] + lik['kl_nats']:.2f} (reconstruction {lik['reconstruction_loss']:.2f}, KL {lik['kl_nats']:.2f})"
    _say(line)
    _say(f"run folder: {target}")


def _train_sweep(sweep: str, preset, config, cli_sets: list[str], progress: bool) -> None:
    from .config import apply_overrides, build_config, read_config_file, read_preset
    from .train import train as run_training

    if "=" not in sweep:
        _fail("--sweep takes section.key=v1,v2,... e.g. --sweep model.latent_dim=100,500,1000,2000")
    key, values = sweep.split("=", 1)
    values = [v.strip() for v in values.split(",") if v.strip()]
    if not values:
        _fail(f"--sweep {sweep}: no values after '='")
    base = read_config_file(config) if config else read_preset(preset or "vae-mnist")
    configs = [build_config(apply_overrides(base, [*cli_sets, f"{key}={v}"])) for v in values]  # check all first
    chosen = config is not None or key == "train.batch_size" or any(s.startswith("train.batch_size=") for s in cli_sets)
    folders = []
    for value, cfg in zip(values, configs):
        target = _unique_run_dir(Path("runs") / f"{cfg.name}-{key.split('.')[-1]}-{value}")
        typer.echo(f"sweep {key}={value}: training {cfg.model.name} -> {target}")
        summary = run_training(cfg, target, progress=progress, adapt_batch_size=not chosen)
        if summary.get("interrupted"):
            typer.echo(f"interrupted; continue with: vaelab train --resume {target}")
            raise typer.Exit(130)
        folders.append(str(target))
    typer.echo("sweep done: " + " ".join(folders))
    typer.echo(f"compare with: vaelab evaluate RUN for each, then vaelab compare {' '.join(folders)} --out compare/")


def _labels_for(model, num: int, label: Optional[int]):
    import torch

    if not model.is_conditional:
        if label is not None:
            _fail(f"--label needs a conditional model; {model.registry_name} is not conditional")
        return None
    k = model.config.num_classes
    if label is not None:
        if not 0 <= label < k:
            _fail(f"--label {label} is out of range: this model has classes 0..{k - 1}")
        return torch.full((num,), label, dtype=torch.long)
    return torch.arange(num) % k


@app.command()
@user_errors
def sample(
    run: Path = typer.Argument(..., help="run folder"),
    num: int = typer.Option(64, "--num", "-n", help="number of images"),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help=".png grid, .npz (images float32 NCHW in [0,1]), or a folder (no extension) for PNG files"),
    seed: int = typer.Option(0, "--seed"),
    label: Optional[int] = typer.Option(None, "--label", help="class to draw (conditional models)"),
    batch_size: int = typer.Option(500, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    weights: str = typer.Option("best", "--weights", help="best: the epoch whose samples scored best in training "
                                "(model-best.safetensors); last: the final weights (model.safetensors)"),
):
    """Draw images from the model's prior."""
    import numpy as np
    import torch
    from torchvision.utils import save_image

    from . import load

    if num < 1:
        _fail("--num must be at least 1")
    if out.suffix.lower() not in ("", ".png", ".jpg", ".jpeg", ".npz"):
        _fail(f"--out {out}: write a .png or .jpg grid, an .npz file, or a folder name without an extension")
    model = load(run, device=device, weights=weights)
    labels = _labels_for(model, num, label)
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, num, batch_size):
        y = None if labels is None else labels[start : start + batch_size].to(device)
        chunks.append(model.sample(min(batch_size, num - start), y=y, generator=generator).float().cpu())
    images = torch.cat(chunks)
    if out.suffix == "" or out.is_dir():
        _write_png_folder(images, labels, out)
    elif out.suffix.lower() == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"images": images.numpy().astype(np.float32)}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez(out, **arrays)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        nrow = model.config.num_classes if labels is not None and label is None else int(math.ceil(math.sqrt(num)))
        save_image(images, out, nrow=nrow, padding=1)
    typer.echo(f"wrote {num} samples to {out}")


def _write_png_folder(images, labels, out: Path, shard: int = 1000):
    import csv

    from torchvision.utils import save_image
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate(tqdm(images, desc=f"writing PNGs to {out}", unit="img", disable=len(images) < 1000)):
        name = f"{i // shard:05d}/{i:07d}.png"
        (out / name).parent.mkdir(exist_ok=True)
        save_image(img, out / name)
        rows.append((name, None if labels is None else int(labels[i])))
    if labels is not None:
        with open(out / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "label"])
            writer.writerows(rows)


@app.command()
@user_errors
def reconstruct(
    run: Path = typer.Argument(..., help="run folder"),
    num: int = typer.Option(16, "--num", "-n", help="number of test images"),
    out: Path = typer.Option(Path("reconstructions.png"), "--out", "-o", help=".png grid: originals above reconstructions"),
    images: Optional[Path] = typer.Option(None, "--images", help="a folder of your own images instead of the run's test split"),
    device: str = typer.Option("cpu", "--device"),
):
    """Encode and decode test images (or your own) and save originals beside reconstructions."""
    import torch
    from torchvision.utils import save_image

    from . import load
    from .data import load_data, read_image_files, spaced_images

    model = load(run, device=device)
    if not model.has_encoder:
        _fail(f"{model.registry_name} has no encoder, so it cannot reconstruct images")
    if images is not None:
        x, _ = read_image_files(images, model.config.channels, model.config.image_size, limit=num)
        y = None
        if model.is_conditional:
            _fail("a conditional model needs labels to reconstruct; use the run's own test split (drop --images)")
    else:
        split = load_data(model.run_config.data).test
        x, labels = spaced_images(split, num)  # spread over the split, whose order may follow the classes
        y = labels.to(device) if model.is_conditional else None
    recon = model.reconstruct(x.to(device), y).float().cpu()
    per_row = min(len(x), 8)
    rows = []
    for start in range(0, len(x), per_row):
        rows += [x[start : start + per_row], recon[start : start + per_row]]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows), out, nrow=per_row, padding=1)
    mse = float((recon - x).pow(2).mean())
    typer.echo(f"wrote {len(x)} originals and reconstructions to {out} (per-pixel MSE {mse:.5f})")


@app.command()
@user_errors
def evaluate(
    run: Path = typer.Argument(..., help="run folder"),
    split: str = typer.Option("test", "--split", help="test | train"),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="samples to draw (default: as many as real images)"),
    features: List[str] = typer.Option(["auto"], "--features", help="auto | classifier:PATH | inception | pixels (repeatable)"),
    k: int = typer.Option(1000, "--k", help="importance samples per image for the IWAE bound (0: skip)"),
    binarized: bool = typer.Option(False, "--binarized", help="the binarized-MNIST protocol: dynamic binarization, fixed seed"),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="local torch-fidelity Inception weights"),
    download: bool = typer.Option(False, "--download", help="allow downloading the Inception weights"),
    utility: bool = typer.Option(True, "--utility/--no-utility", help="classification accuracy score and augmentation gain"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto; under torchrun one per process"),
    weights: str = typer.Option("best", "--weights", help="best (model-best.safetensors where the run has it) | last"),
):
    """Measure a run: likelihood (ELBO, IWAE, reconstruction, KL) and samples (FID/KID/IS, MMD, MS-SSIM, P/R, ...).
    Under torchrun the work is split across the processes, with the same result as one process."""
    from .evaluate import evaluate as run_evaluation, headline

    result = run_evaluation(run, split=split, num_samples=num_samples, features=features, k=k, binarized=binarized,
                            inception_weights=inception_weights, download=download, utility=utility, seed=seed,
                            device=device, weights=weights)
    if result is None:  # not the main process of a torchrun launch: the main one reports
        return
    for key, value in headline(result).items():
        typer.echo(f"{key:32s} {value:.5g}" if isinstance(value, float) else f"{key:32s} {value}")
    typer.echo(f"wrote {run / 'eval' / 'metrics.json'} and report.md ({result['seconds']:.1f} s)")


@app.command()
@user_errors
def compare(
    runs: List[Path] = typer.Argument(..., help="evaluated run folders"),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="report folder"),
):
    """One report over several evaluated runs: table (best in bold), grids, bar charts, curves; MD, HTML, CSV."""
    from .compare import compare as run_compare

    folder = run_compare(runs, out)
    typer.echo(f"wrote {folder / 'report.md'}, {folder / 'report.html'} and {folder / 'metrics.csv'}")


@app.command("train-classifier")
@user_errors
def train_classifier_command(
    data: str = typer.Option("mnist5k", "--data", help="a labelled dataset (see `vaelab datasets`)"),
    image_size: Optional[int] = typer.Option(None, "--image-size"),
    channels: Optional[int] = typer.Option(None, "--channels"),
    data_root: str = typer.Option("data", "--data-root"),
    epochs: int = typer.Option(10, "--epochs"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder (default: the cache, <cache>/classifiers/<data>; $VAELAB_CACHE sets <cache>)"),
    seed: int = typer.Option(0, "--seed"),
):
    """Train the domain classifier whose features and logits give FID/KID/IS offline (--features classifier:PATH)."""
    from .config import DataConfig
    from .data import load_data
    from .evaluate import classifier_folder_for, train_and_save_classifier

    cfg = DataConfig(name=data, image_size=image_size, channels=channels, root=data_root)
    folder = out or classifier_folder_for(cfg)
    info = train_and_save_classifier(load_data(cfg), folder, epochs=epochs, seed=seed)
    typer.echo(f"test accuracy {info['test_accuracy']:.4f}; saved to {folder} (use --features classifier:{folder})")


def _load_for_use(run: Path, device: str):
    from . import load

    return load(run, device=device)


@app.command()
@user_errors
def interpolate(
    run: Path = typer.Argument(..., help="run folder"),
    start: str = typer.Option(..., "--from", help="an image file, a test-set index, or seed:N"),
    end: str = typer.Option(..., "--to", help="an image file, a test-set index, or seed:N"),
    steps: int = typer.Option(10, "--steps"),
    spherical: bool = typer.Option(False, "--slerp", help="spherical instead of linear interpolation"),
    out: Path = typer.Option(Path("interpolation.png"), "--out", "-o", help="grid PNG; a GIF is written beside it"),
    device: str = typer.Option("cpu", "--device"),
):
    """Decode the path between two latents: a grid PNG and an animated GIF."""
    import torch

    from .data import load_data
    from .latent import interpolate as interp, resolve_latent, save_gif, save_grid

    model = _load_for_use(run, device)
    split = load_data(model.run_config.data).test if model.has_encoder else None
    za, xa, ya = resolve_latent(model, start, split)
    zb, xb, yb = resolve_latent(model, end, split)
    label = ya if ya is not None else (0 if model.is_conditional else None)
    frames = interp(model, za, zb, max(2, steps), spherical, label)
    row = list(frames)
    if xa is not None and xb is not None:  # the inputs at both ends, for comparison with the decoded end points
        row = [xa, *row, xb]
    save_grid(torch.stack(row), out, nrow=len(row))
    gif = out.with_suffix(".gif")
    save_gif(frames, gif)
    typer.echo(f"wrote {out} and {gif} ({len(frames)} steps, {'slerp' if spherical else 'linear'})")


@app.command()
@user_errors
def attributes(
    run: Path = typer.Argument(..., help="run folder"),
    labels: Optional[str] = typer.Option(None, "--labels", help="CSV of attributes (folder datasets)"),
    device: str = typer.Option("cpu", "--device"),
):
    """Store attribute vectors (mean latent with minus without) in the run folder, from the data's attributes or classes."""
    from .latent import compute_attribute_vectors

    model = _load_for_use(run, device)
    info = compute_attribute_vectors(model, run, labels)
    typer.echo(f"{len(info['attributes'])} attribute vectors saved in {run}: {', '.join(info['attributes'][:12])}"
               + (" ..." if len(info["attributes"]) > 12 else ""))


@app.command()
@user_errors
def edit(
    run: Path = typer.Argument(..., help="run folder with attribute vectors (`vaelab attributes`)"),
    image: str = typer.Option(..., "--image", help="an image file or a test-set index"),
    attr: List[str] = typer.Option(..., "--attr", help="NAME=STRENGTH, e.g. --attr Smiling=+1.5 (repeatable)"),
    out: Path = typer.Option(Path("edited.png"), "--out", "-o", help="original | edited; a strength sweep beside it"),
    device: str = typer.Option("cpu", "--device"),
):
    """Edit an image by latent arithmetic along attribute vectors, and write a strength sweep."""
    import torch

    from .data import load_data
    from .latent import edit as edit_latent, load_attribute_vectors, resolve_latent, save_grid, strength_sweep

    model = _load_for_use(run, device)
    vectors = load_attribute_vectors(run)
    strengths = {}
    for item in attr:
        if "=" not in item:
            _fail(f"--attr {item!r}: write NAME=STRENGTH, e.g. --attr class_8=1.5")
        name, value = item.split("=", 1)
        try:
            strengths[name] = float(value)
        except ValueError:
            _fail(f"--attr {item!r}: the strength must be a number")
    z, x, _ = resolve_latent(model, image, load_data(model.run_config.data).test)
    edited = edit_latent(model, z, vectors, strengths)
    with torch.no_grad():
        recon = model.decode(z[None].to(model.device)).float().cpu()
    save_grid(torch.cat([x[None], recon, edited]), out, nrow=3)
    first = next(iter(strengths))
    sweep_path = out.with_name(out.stem + "-sweep.png")
    save_grid(strength_sweep(model, z, vectors, first), sweep_path, nrow=8)
    typer.echo(f"wrote {out} (input | reconstruction | edited) and {sweep_path} ({first} from -2 to +2)")


@app.command()
@user_errors
def anomaly(
    run: Path = typer.Argument(..., help="run folder"),
    images: Optional[Path] = typer.Option(None, "--images", help="a folder of images to score"),
    data: Optional[str] = typer.Option(None, "--data", help="score a dataset's test split instead (e.g. mnist5k)"),
    anomalous_classes: Optional[str] = typer.Option(None, "--anomalous-classes", help="with --data: these classes are the anomalies, e.g. 9"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="with --images: CSV of file, label (1 = anomalous)"),
    score: str = typer.Option("elbo", "--score", help="elbo (negative ELBO) | iwae (negative IWAE estimate)"),
    k: int = typer.Option(100, "--k", help="importance samples for --score iwae"),
    out: Path = typer.Option(Path("anomaly_scores.csv"), "--out", "-o", help="CSV of per-image scores; a histogram beside it"),
    device: str = typer.Option("cpu", "--device"),
):
    """Score images by how unlikely the model finds them; with labels, report the ROC-AUC."""
    import csv as csv_module

    import torch

    from .config import DataConfig
    from .data import first_images, load_data, read_image_files
    from .latent import anomaly_scores, plot_histogram, roc_auc, write_scores

    if score not in ("elbo", "iwae"):
        _fail("--score must be elbo or iwae")
    model = _load_for_use(run, device)
    truth = None
    if images is not None:
        x, files = read_image_files(images, model.config.channels, model.config.image_size)
        names = [str(f.relative_to(images)) for f in files]
        if labels is not None:
            table = {row[0]: int(row[1]) for row in list(csv_module.reader(open(labels)))[1:] if len(row) >= 2}
            missing = [n for n in names if n not in table and Path(n).name not in table]
            if missing:
                _fail(f"{labels} has no label for {len(missing)} image(s), e.g. {missing[:3]}")
            truth = torch.tensor([table.get(n, table.get(Path(n).name)) for n in names])
    elif data is not None:
        base = model.run_config.data
        split = load_data(DataConfig(name=data, image_size=model.config.image_size, channels=model.config.channels,
                                     root=base.root)).test
        x = first_images(split, len(split))
        names = [f"{data}:test:{i}" for i in range(len(x))]
        if anomalous_classes is not None:
            bad = torch.tensor([int(c) for c in anomalous_classes.split(",")])
            truth = torch.isin(split.labels, bad).long()
    else:
        _fail("give --images DIR or --data NAME")
    scores = anomaly_scores(model, x, score, k)
    write_scores(out, names, scores, truth)
    plot_histogram(scores, out.with_suffix(".png"), truth)
    line = f"scored {len(x)} images ({score}) -> {out}"
    if truth is not None and 0 < int(truth.sum()) < len(truth):
        line += f"; ROC-AUC {roc_auc(scores, truth):.4f} ({int(truth.sum())} anomalous, {len(truth) - int(truth.sum())} normal)"
    typer.echo(line)


@app.command("latent-map")
@user_errors
def latent_map(
    run: Path = typer.Argument(..., help="run folder"),
    out: Path = typer.Option(Path("latent_map"), "--out", "-o", help="folder for manifold.png and scatter.png"),
    method: str = typer.Option("pca", "--method", help="pca | tsne, for latents of more than 2 dimensions"),
    label: Optional[int] = typer.Option(None, "--label", help="the class of the manifold grid (conditional models)"),
    device: str = typer.Option("cpu", "--device"),
):
    """Draw the latent space: the decoded manifold for a 2-D latent and a scatter of test encodings by class."""
    from .data import first_images, load_data
    from .latent import encode_all, latent_scatter, manifold_grid, save_grid

    model = _load_for_use(run, device)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if model.config.latent_dim == 2:
        lab = label if label is not None else (0 if model.is_conditional else None)
        save_grid(manifold_grid(model, 20, lab), out / "manifold.png", nrow=20)
        written.append("manifold.png")
    if model.has_encoder:
        split = load_data(model.run_config.data).test
        z = encode_all(model, first_images(split, len(split)), split.labels)
        how = latent_scatter(z, split.labels, out / "scatter.png", method)
        written.append(f"scatter.png ({how})")
    typer.echo(f"wrote {', '.join(written)} to {out}")


@app.command()
@user_errors
def explore(
    run: Path = typer.Argument(..., help="run folder"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; 0.0.0.0 exposes it to your network"),
    port: int = typer.Option(7860, "--port"),
    device: str = typer.Option("cpu", "--device"),
):
    """Open a web page to explore the latent space: sliders, interpolation, reconstruction, attributes."""
    try:
        from .explore import launch
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        _fail('the explorer needs Gradio: pip install "vaelab[explore]" (or pip install "gradio" "pillow<13")')
    typer.echo(f"serving {run} on http://{host}:{port} (Ctrl-C to stop)")
    launch(run, host=host, port=port, device=device)


@app.command()
def presets():
    """List the presets, one line each."""
    from .config import read_preset, preset_names

    for name in preset_names():
        raw = read_preset(name)
        typer.echo(f"{name:28s} {raw.get('description', '')}")


@app.command()
def datasets():
    """List the data sources."""
    from .data import DATASETS

    for name, text in DATASETS.items():
        typer.echo(f"{name:16s} {text}")


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="print the version and exit")):
    if version:
        from . import __version__

        typer.echo(__version__)
        raise typer.Exit()


if __name__ == "__main__":
    sys.exit(app())
