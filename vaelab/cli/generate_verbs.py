"""Verbs that draw from a trained run: `sample` (grids, arrays, folders of synthetic data), `reconstruct`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import DEVICE_HELP, app, fail, user_errors


@app.command()
@user_errors
def sample(
    run: Path = typer.Argument(..., help="run folder"),
    num: int = typer.Option(64, "--num", "-n", help="number of images"),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help=".png grid, .npz (images float32 NCHW in [0,1]), or a folder (no extension) for PNG files"),
    seed: int = typer.Option(0, "--seed"),
    label: Optional[int] = typer.Option(None, "--label", help="class to draw: a conditional model's, or any model's "
                                        "whose latent sampler was fitted per class (the default on labelled data)"),
    batch_size: int = typer.Option(500, "--batch-size"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    weights: str = typer.Option("best", "--weights", help="best: the epoch whose samples scored best in training "
                                "(model-best.safetensors); last: the final weights (model.safetensors)"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="where z comes from: the run's fitted default "
                                          "(sampler-*.safetensors) unless prior | gmm | flow | two-stage is given"),
):
    """Draw images: z from the run's fitted latent sampler (the prior N(0, I) where none is fitted), decoded."""
    from .. import load
    from ..sampling import check_export_path, draw, draw_batches, export, labels_for, write_png_folder

    check_export_path(out)
    model = load(run, device=device, weights=weights, sampler=sampler)
    labels = labels_for(model, num, label)
    if out.suffix == "" or out.is_dir():  # a folder of PNGs: each batch written before the next is drawn
        write_png_folder(draw_batches(model, num, seed, labels, batch_size), labels, out, total=num)
    else:
        images = draw(model, num, seed, labels, batch_size)
        export(images, labels, out,
               grid_columns=model.config.num_classes if labels is not None and label is None else None)
    note = getattr(model, "sampler_note", None)
    typer.echo(f"wrote {num} samples to {out} (z from the {model.sampler_kind} sampler{'; ' + note if note else ''})")


@app.command("fit-sampler")
@user_errors
def fit_sampler_command(
    run: Path = typer.Argument(..., help="run folder of a model with an encoder"),
    sampler: str = typer.Option("gmm", "--sampler", help="gmm: a Gaussian mixture on the training codes | flow: a "
                                "masked autoregressive flow (zuko's MAF) | two-stage: Dai & Wipf's second VAE (each per class where the "
                                "data have labels)"),
    components: Optional[List[int]] = typer.Option(None, "--components", help="candidate numbers of components "
                                                   "(repeatable; default 10 20 50 100), chosen on validation"),
    spread: Optional[List[float]] = typer.Option(None, "--spread", help="candidate spreads, a factor on the base "
                                                 "noise or every component's standard deviations (repeatable; "
                                                 "default 1.0 1.2 for gmm, 0.8 1.0 otherwise)"),
    per_class: Optional[bool] = typer.Option(None, "--per-class/--one-mixture", help="a density per class (default "
                                             "where the data have labels: --label works for every model)"),
    weights: str = typer.Option("best", "--weights", help="best | last: the weights whose codes are fitted"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Fit a latent sampler on a trained run's training codes (runs made before samplers too), its settings chosen
    on the validation images; `sample`, `evaluate` and the explorer then draw from it."""
    from ..samplers import describe, fit_sampler, refused_record
    from ..samplers.base import refused_path, sampler_paths

    fitted = fit_sampler(run, sampler, weights=weights, components=components, spreads=spread,
                         per_class=per_class, seed=seed, device=device)
    if fitted is None:
        fail(f"no {sampler} sampler kept: {refused_record(run, sampler, weights)['reason']}. The run samples from the "
             f"prior; the candidates' measurements are in {refused_path(run, sampler, weights)}", code=1)
    chosen = fitted.settings["chosen"]
    typer.echo(f"{sampler}: {describe(chosen)}, validation FID {chosen['validation_fid']:.2f}"
               + f"; saved {sampler_paths(run, sampler, weights)[0]} ({fitted.settings['fit_seconds']:.1f} s)")


@app.command()
@user_errors
def reconstruct(
    run: Path = typer.Argument(..., help="run folder"),
    num: int = typer.Option(16, "--num", "-n", help="number of test images"),
    out: Path = typer.Option(Path("reconstructions.png"), "--out", "-o", help=".png grid: originals above reconstructions"),
    images: Optional[Path] = typer.Option(None, "--images", help="a folder of your own images instead of the run's test split"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Encode and decode test images (or your own) and save originals beside reconstructions."""
    from .. import load
    from ..data import load_data, read_image_files, spaced_images
    from ..grids import originals_over_reconstructions, save_grid

    model = load(run, device=device)
    if not model.has_encoder:
        fail(f"{model.registry_name} has no encoder, so it cannot reconstruct images")
    if images is not None:
        if model.is_conditional:
            fail("a conditional model needs labels to reconstruct; use the run's own test split (drop --images)")
        x, _ = read_image_files(images, model.config.channels, model.config.image_size, limit=num)
        y = None
    else:
        x, labels = spaced_images(load_data(model.run_config.data).test, num)  # spread over the classes
        y = labels.to(model.device) if model.is_conditional else None
    recon = model.reconstruct(x.to(model.device), y).float().cpu()
    grid, per_row = originals_over_reconstructions(x, recon)
    save_grid(grid, out, nrow=per_row)
    mse = float((recon - x).pow(2).mean())
    typer.echo(f"wrote {len(x)} originals and reconstructions to {out} (per-pixel MSE {mse:.5f})")
