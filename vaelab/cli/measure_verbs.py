"""Verbs that measure: `evaluate` (one run), `compare` (many runs), `train-classifier` (the domain feature space)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import DEVICE_HELP, app, user_errors


@app.command()
@user_errors
def evaluate(
    run: Path = typer.Argument(..., help="run folder"),
    split: str = typer.Option("test", "--split", help="test (the reported number) | validation (for choices: a setting, a sampler, an epoch) | train"),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="samples to draw (default: as many as real images)"),
    features: List[str] = typer.Option(["auto"], "--features", help="auto | classifier:PATH | inception | pixels (repeatable)"),
    k: int = typer.Option(1000, "--k", help="importance samples per image for the IWAE bound (0: skip)"),
    binarized: bool = typer.Option(False, "--binarized", help="the binarized-MNIST protocol: dynamic binarization, fixed seed"),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="local torch-fidelity Inception weights"),
    download: bool = typer.Option(False, "--download", help="allow downloading the Inception weights"),
    utility: bool = typer.Option(True, "--utility/--no-utility", help="classification accuracy score and augmentation gain"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP + "; under torchrun one per process"),
    weights: str = typer.Option("best", "--weights", help="best (model-best.safetensors where the run has it) | last"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="the sample side with this latent sampler: prior | "
                                          "gmm | flow | two-stage (default: the run's fitted default, else the prior)"),
    track: Optional[List[str]] = typer.Option(None, "--track", help="log the metrics to this tracker (mlflow | wandb; "
                                              "repeatable); default: the trackers the run was trained with"),
):
    """Measure a run: likelihood (ELBO, IWAE, reconstruction, KL) and samples (FID/KID/IS, MMD, MS-SSIM, P/R, ...).
    Under torchrun the work is split across the processes, with the same result as one process."""
    from ..evaluate import evaluate as run_evaluation
    from ..evaluation_report import headline

    result = run_evaluation(run, split=split, num_samples=num_samples, features=features, k=k, binarized=binarized,
                            inception_weights=inception_weights, download=download, utility=utility, seed=seed,
                            device=device, weights=weights, sampler=sampler)
    if result is None:  # not the main process of a torchrun launch: the main one reports
        return
    for key, value in headline(result).items():
        typer.echo(f"{key:32s} {value:.5g}" if isinstance(value, float) else f"{key:32s} {value}")
    typer.echo(f"wrote {run / 'eval' / 'metrics.json'} and report.md ({result['seconds']:.1f} s)")
    from ..tracking import track_evaluation

    logged = track_evaluation(run, result, track)
    if logged:
        typer.echo(f"logged the metrics to {', '.join(logged)}")


@app.command()
@user_errors
def compare(
    runs: List[str] = typer.Argument(..., help="evaluated run folders, or tracker runs: mlflow:RUN_ID, wandb:ENTITY/PROJECT/ID"),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="report folder"),
):
    """One report over several evaluated runs: table (best in bold), grids, bar charts, curves; MD, HTML, CSV."""
    from ..compare import compare as run_compare

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
    from ..config import DataConfig
    from ..data import load_data
    from ..metrics.features import classifier_folder_for, train_and_save_classifier

    cfg = DataConfig(name=data, image_size=image_size, channels=channels, root=data_root)
    folder = out or classifier_folder_for(cfg)
    info = train_and_save_classifier(load_data(cfg), folder, epochs=epochs, seed=seed)
    typer.echo(f"test accuracy {info['test_accuracy']:.4f}; saved to {folder} (use --features classifier:{folder})")


@app.command("cache")
@user_errors
def cache_command(clear: bool = typer.Option(False, "--clear", help="remove every cached folder (decoded again on its next use)")):
    """List the folders whose decoded pixels are cached (each decoded once, memory-mapped by every run and verb)."""
    from ..data.pixel_cache import cache_entries, clear_cache, pixel_cache_root

    entries = clear_cache() if clear else cache_entries()
    for item in entries:
        shape = "x".join(map(str, item["shape"])) if item["shape"] else "incomplete"
        typer.echo(f"{'removed ' if clear else ''}{item['root']}: {shape} uint8, {item['bytes'] / 2**20:,.1f} MiB "
                   f"({item['entry']})")
    if not entries:
        typer.echo(f"no cached folders in {pixel_cache_root()}")
