"""The ``vaelab`` command: one small function per verb, each calling the library."""

from __future__ import annotations

import functools
import math
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


def user_errors(fn):
    """Turn VaelabError into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.simplefilter("default")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
        try:
            return fn(*args, **kwargs)
        except VaelabError as exc:
            _fail(str(exc))

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
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N | mps"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="stop cleanly after this much training: 90s, 10m, 1h"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many optimizer steps"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/<preset>, made unique)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this folder from its newest checkpoint"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
):
    """Train a model into a run folder (config, weights, checkpoints, samples, metrics)."""
    from .config import apply_overrides, build_config, read_config_file, read_preset
    from .run import RunFolder
    from .train import train as run_training

    cli_sets = list(overrides)
    for key, value in (("data.name", data), ("data.root", data_root), ("train.epochs", epochs),
                       ("train.batch_size", batch_size), ("train.precision", precision), ("train.device", device),
                       ("train.seed", seed), ("train.time_budget", time_budget), ("train.max_steps", max_steps)):
        if value is not None:
            cli_sets.append(f"{key}={value}")
    if download:
        cli_sets.append("data.download=true")
    if strict:
        cli_sets.append("data.strict=true")

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
        if out is not None:
            if RunFolder(out).exists():
                _fail(f"{out} already holds a run; continue it with `vaelab train --resume {out}` or choose another --out")
            target = out
        else:
            target = _unique_run_dir(Path("runs") / cfg.name)
        resuming = False
    typer.echo(f"training {cfg.model.name} ({cfg.name}) on {cfg.data.name} -> {target}")
    summary = run_training(cfg, target, resume=resuming, progress=progress)
    if summary.get("interrupted"):
        typer.echo(f"interrupted at step {summary['step']}; checkpoint saved. Continue with: vaelab train --resume {target}")
        raise typer.Exit(130)
    line = f"done: {summary['steps']} steps, {summary['images_per_s']:.0f} images/s, {summary['train_seconds']:.1f} s"
    if "test_elbo" in summary:
        line += (f"\ntest ELBO {summary['test_elbo']:.2f} nats/image ({summary['test_bits_per_dim']:.4f} bits/dim; "
                 f"nll {summary['test_nll']:.2f}, KL {summary['test_kl']:.2f}) on {summary['test_images']} test images")
    elif "test_loss" in summary:
        line += f"\ntest loss {summary['test_loss']:.2f} (reconstruction {summary['test_recon']:.2f}, KL {summary['test_kl']:.2f})"
    typer.echo(line)
    typer.echo(f"run folder: {target}")


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
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help=".png grid, .npz (images float32 NCHW in [0,1]), or DIR/ for PNG files"),
    seed: int = typer.Option(0, "--seed"),
    label: Optional[int] = typer.Option(None, "--label", help="class to draw (conditional models)"),
    batch_size: int = typer.Option(500, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
):
    """Draw images from the model's prior."""
    import numpy as np
    import torch
    from torchvision.utils import save_image

    from . import load

    if num < 1:
        _fail("--num must be at least 1")
    model = load(run, device=device)
    labels = _labels_for(model, num, label)
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, num, batch_size):
        y = None if labels is None else labels[start : start + batch_size].to(device)
        chunks.append(model.sample(min(batch_size, num - start), y=y, generator=generator).float().cpu())
    images = torch.cat(chunks)
    if str(out).endswith(("/", "\\")) or out.is_dir():
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

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate(images):
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
    from .data import first_images, load_data, read_image_files

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
        x = first_images(split, num)
        y = None if not model.is_conditional else split.labels[: len(x)].to(device)
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
