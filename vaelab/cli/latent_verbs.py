"""Verbs that work in the latent space: `interpolate`, `attributes`, `edit`, `anomaly`, `latent-map`, `explore`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import DEVICE_HELP, app, fail, user_errors


@app.command()
@user_errors
def interpolate(
    run: Path = typer.Argument(..., help="run folder"),
    start: str = typer.Option(..., "--from", help="an image file, a test-set index, or seed:N"),
    end: str = typer.Option(..., "--to", help="an image file, a test-set index, or seed:N"),
    steps: int = typer.Option(10, "--steps"),
    spherical: bool = typer.Option(False, "--slerp", help="spherical instead of linear interpolation"),
    label: Optional[int] = typer.Option(None, "--label", help="the class of seed:N ends (drawn from a per-class "
                                        "sampler) and of a conditional model's decoder (default: the ends' own, else 0)"),
    out: Path = typer.Option(Path("interpolation.png"), "--out", "-o", help="grid PNG; a GIF is written beside it"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Decode the path between two latents: a grid PNG and an animated GIF."""
    import torch

    from ..data import load_data
    from .. import load
    from ..grids import save_grid
    from ..latent import interpolate as interp, resolve_latent, save_gif

    model = load(run, device=device)
    split = load_data(model.run_config.data).test if model.has_encoder else None
    za, xa, ya = resolve_latent(model, start, split, label)
    zb, xb, yb = resolve_latent(model, end, split, label)
    decoded_as = ya if ya is not None else (0 if model.is_conditional else None)
    frames = interp(model, za, zb, max(2, steps), spherical, decoded_as if model.is_conditional else None)
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Store attribute vectors (mean latent with minus without) in the run folder, from the data's attributes or classes."""
    from .. import load
    from ..latent import compute_attribute_vectors

    model = load(run, device=device)
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Edit an image by latent arithmetic along attribute vectors, and write a strength sweep."""
    import torch

    from ..data import load_data
    from .. import load
    from ..grids import save_grid
    from ..latent import edit as edit_latent, load_attribute_vectors, resolve_latent, strength_sweep

    model = load(run, device=device)
    vectors = load_attribute_vectors(run)
    strengths = {}
    for item in attr:
        if "=" not in item:
            fail(f"--attr {item!r}: write NAME=STRENGTH, e.g. --attr class_8=1.5")
        name, value = item.split("=", 1)
        try:
            strengths[name] = float(value)
        except ValueError:
            fail(f"--attr {item!r}: the strength must be a number")
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Score images by how unlikely the model finds them; with labels, report the ROC-AUC."""
    import torch

    from .. import load
    from ..config import DataConfig
    from ..data import load_data, read_image_files
    from ..latent import anomaly_scores, plot_histogram, read_anomaly_labels, roc_auc, write_scores

    if score not in ("elbo", "iwae"):
        fail("--score must be elbo or iwae")
    model = load(run, device=device)
    truth = None
    if images is not None:
        x, files = read_image_files(images, model.config.channels, model.config.image_size)
        names = [str(f.relative_to(images)) for f in files]
        if labels is not None:
            truth = read_anomaly_labels(labels, names)
    elif data is not None:
        base = model.run_config.data
        split = load_data(DataConfig(name=data, image_size=model.config.image_size, channels=model.config.channels,
                                     root=base.root)).test
        x = split  # read a batch at a time
        names = [f"{data}:test:{i}" for i in range(len(x))]
        if anomalous_classes is not None:
            bad = torch.tensor([int(c) for c in anomalous_classes.split(",")])
            truth = torch.isin(split.labels, bad).long()
    else:
        fail("give --images DIR or --data NAME")
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Draw the latent space: the decoded manifold for a 2-D latent and a scatter of test encodings by class."""
    from ..data import load_data
    from .. import load
    from ..grids import save_grid
    from ..latent import encode_all, latent_scatter, manifold_grid

    model = load(run, device=device)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if model.config.latent_dim == 2:
        lab = label if label is not None else (0 if model.is_conditional else None)
        save_grid(manifold_grid(model, 20, lab), out / "manifold.png", nrow=20)
        written.append("manifold.png")
    if model.has_encoder:
        split = load_data(model.run_config.data).test
        z = encode_all(model, split, split.labels)
        how = latent_scatter(z, split.labels, out / "scatter.png", method)
        written.append(f"scatter.png ({how})")
    typer.echo(f"wrote {', '.join(written)} to {out}")


@app.command()
@user_errors
def explore(
    run: Path = typer.Argument(..., help="run folder"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; 0.0.0.0 exposes it to your network"),
    port: int = typer.Option(7860, "--port"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Open a web page to explore the latent space: sliders, interpolation, reconstruction, attributes."""
    try:
        from ..explore import launch
        import gradio  # noqa: F401  (only whether it is installed)
    except ModuleNotFoundError:
        fail('the explorer needs Gradio: pip install "vaelab[explore]" (or pip install "gradio" "pillow<13")')
    typer.echo(f"serving {run} on http://{host}:{port} (Ctrl-C to stop)")
    launch(run, host=host, port=port, device=device)
