"""Verbs that train: `train` (one run, a resumed run, or a sweep), `presets`, `datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import app, fail, say, user_errors


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
    track: Optional[List[str]] = typer.Option(None, "--track", help="also log to this tracker: mlflow | wandb "
                                              "(repeatable; adds to train.trackers)"),
):
    """Train a model into a run folder (config, weights, checkpoints, samples, metrics)."""
    from ..config import apply_overrides, build_config, read_config_file, read_preset
    from ..processes import decided_on_main_process
    from ..run import RunFolder, new_run_folder
    from ..tracking import TRACKER_NAMES
    from ..training import train as run_training

    cli_sets = list(overrides)
    for key, value in (("data.name", data), ("data.root", data_root), ("train.epochs", epochs),
                       ("train.batch_size", batch_size), ("train.precision", precision), ("train.device", device),
                       ("train.seed", seed), ("train.time_budget", time_budget), ("train.max_steps", max_steps),
                       ("train.on_nan", on_nan)):
        if value is not None:
            cli_sets.append(f"{key}={value}")
    cli_sets += ["data.download=true"] * download + ["data.strict=true"] * strict
    # a preset's batch size is a default, shrunk to fit a small folder; one the user gave is kept (or an error)
    chosen = config is not None or resume is not None or any(s.startswith("train.batch_size=") for s in cli_sets)
    if sweep is not None:
        if resume is not None or out is not None:
            fail("--sweep names its own run folders (runs/<name>-<key>-<value>); drop --resume/--out")
        if track:
            fail("--sweep takes its trackers from the config: --set \"train.trackers=[tensorboard, mlflow]\"")
        _train_sweep(sweep, preset, config, cli_sets, progress, chosen)
        return
    if resume is not None:
        if preset or config or data:
            fail("--resume continues a run with its own config; drop --preset/--config/--data")
        changed = [s.split("=", 1)[0] for s in cli_sets if not s.startswith("train.")]
        if changed:
            fail(f"--resume can only change train.* settings, not {', '.join(changed)}")
        run = RunFolder(resume)
        cfg = build_config(apply_overrides(run.read_config().to_dict(), cli_sets))
        target, resuming = resume, bool(run.checkpoints())
        if not resuming:
            typer.echo(f"{resume} has no checkpoint yet; starting it from the beginning")
    else:
        raw = read_config_file(config) if config else read_preset(preset or "vae-mnist")
        cfg = build_config(apply_overrides(raw, cli_sets))
        target = decided_on_main_process(cfg.train.device, lambda: new_run_folder(cfg.name, out))
        resuming = False
    for name in track or []:
        if name not in TRACKER_NAMES:
            fail(f"--track {name}: the trackers are {', '.join(TRACKER_NAMES)}")
        if name not in cfg.train.trackers:
            cfg.train.trackers.append(name)
    say(f"training {cfg.model.name} ({cfg.name}) on {cfg.data.name} -> {target}")
    summary = run_training(cfg, target, resume=resuming, progress=progress, adapt_batch_size=not chosen)
    if summary.get("interrupted"):
        say(f"interrupted at step {summary['step']}; checkpoint saved. Continue with: vaelab train --resume {target}")
        raise typer.Exit(130)
    line = f"done: {summary['steps']} steps, {summary['images_per_s']:.0f} images/s, {summary['train_seconds']:.1f} s"
    lik = summary.get("likelihood") or {}
    if "elbo_nats" in lik:
        line += (f"\ntest ELBO {lik['elbo_nats']:.2f} nats/image ({lik['elbo_bits_per_dim']:.4f} bits/dim; "
                 f"reconstruction {lik['reconstruction_nll_nats']:.2f}, KL {lik['kl_nats']:.2f}) on "
                 f"{lik['settings']['images']} test images (fp32; the definitions of `vaelab evaluate`)")
    elif "reconstruction_loss" in lik:
        line += f"\ntest loss {lik['reconstruction_loss'] + lik['kl_nats']:.2f} (reconstruction {lik['reconstruction_loss']:.2f}, KL {lik['kl_nats']:.2f})"
    say(line)
    say(f"run folder: {target}")


def _train_sweep(sweep: str, preset, config, cli_sets: list[str], progress: bool, chosen: bool) -> None:
    from ..config import read_config_file, read_preset
    from ..training import train as run_training
    from ..training.sweep import plan_sweep

    base = read_config_file(config) if config else read_preset(preset or "vae-mnist")
    key, plan = plan_sweep(sweep, base, cli_sets)
    chosen = chosen or key == "train.batch_size"
    for value, cfg, target in plan:
        typer.echo(f"sweep {key}={value}: training {cfg.model.name} -> {target}")
        summary = run_training(cfg, target, progress=progress, adapt_batch_size=not chosen)
        if summary.get("interrupted"):
            typer.echo(f"interrupted; continue with: vaelab train --resume {target}")
            raise typer.Exit(130)
    folders = " ".join(str(target) for _, _, target in plan)
    typer.echo("sweep done: " + folders)
    typer.echo(f"compare with: vaelab evaluate RUN for each, then vaelab compare {folders} --out compare/")


@app.command()
def presets():
    """List the presets, one line each."""
    from ..config import read_preset, preset_names

    for name in preset_names():
        raw = read_preset(name)
        typer.echo(f"{name:28s} {raw.get('description', '')}")


@app.command()
def datasets():
    """List the data sources."""
    from ..data import DATASETS

    for name, text in DATASETS.items():
        typer.echo(f"{name:16s} {text}")
