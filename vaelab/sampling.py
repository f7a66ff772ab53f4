"""Drawing images from a trained model and writing them out: a grid, an .npz array, or a folder of PNG files
(with labels.csv for a conditional model), the synthetic data a user exports."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from .errors import VaelabError
from .grids import grid_nrow, save_grid
from .processes import map_chunks

EXPORT_SUFFIXES = ("", ".png", ".jpg", ".jpeg", ".npz")


def labels_for(model, num: int, label: int | None) -> torch.Tensor | None:
    """The labels (num,) of ``num`` draws: ``label`` for all, or the classes in turn; None for an unconditional
    model without ``label``. An unconditional model takes ``label`` from a per-class latent sampler (its codes of
    that class), and refuses it otherwise."""
    sampler = getattr(model, "latent_sampler", None)
    per_class = sampler is not None and bool(sampler.class_names)
    if not model.is_conditional:
        if label is None:
            return None
        if not per_class:
            raise VaelabError(f"--label needs a conditional model or a per-class sampler; {model.registry_name} is not "
                              f"conditional and draws from the {getattr(model, 'sampler_kind', 'prior')} sampler (fit "
                              f"one per class on labelled data: `vaelab fit-sampler RUN --per-class`)")
    k = model.config.num_classes if model.is_conditional else len(sampler.class_names)
    if label is not None:
        if not 0 <= label < k:
            raise VaelabError(f"--label {label} is out of range: this model has classes 0..{k - 1}")
        return torch.full((num,), label, dtype=torch.long)
    return torch.arange(num) % k


def draw_batches(model, num: int, seed: int, labels: torch.Tensor | None = None, batch_size: int = 500):
    """``draw``'s samples as float32 (b, C, H, W) batches in [0, 1] on the CPU, in order: a large export writes
    each batch before the next is drawn."""
    if num < 1:
        raise VaelabError("--num must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num, batch_size):
        y = None if labels is None else labels[start : start + batch_size].to(model.device)
        with torch.no_grad():
            yield model.sample(min(batch_size, num - start), y=y, generator=generator).float().cpu()


def draw(model, num: int, seed: int, labels: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
    """``num`` samples (num, C, H, W) float32 in [0, 1] on the CPU, in batches, from one seeded generator."""
    return torch.cat(list(draw_batches(model, num, seed, labels, batch_size)))


def check_export_path(out: Path) -> None:
    if Path(out).suffix.lower() not in EXPORT_SUFFIXES:
        raise VaelabError(f"--out {out}: write a .png or .jpg grid, an .npz file, or a folder name without an "
                          "extension")


def export(images: torch.Tensor, labels: torch.Tensor | None, out: Path, grid_columns: int | None = None) -> None:
    """Write ``images`` (N, C, H, W) in [0, 1] to ``out``: a folder (no extension) of PNG files in shards of 1,000
    with labels.csv; an .npz with ``images`` float32 NCHW (and ``labels``); or a grid image of ``grid_columns``
    images per row."""
    out = Path(out)
    check_export_path(out)
    if out.suffix == "" or out.is_dir():
        write_png_folder(images, labels, out)
    elif out.suffix.lower() == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"images": images.numpy().astype(np.float32)}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez(out, **arrays)
    else:
        save_grid(images, out, nrow=grid_columns or grid_nrow(len(images)))


def write_png_folder(images, labels: torch.Tensor | None, out: Path, shard: int = 1000,
                     total: int | None = None) -> None:
    """PNG files in shards of ``shard`` (and labels.csv): ``images`` a tensor (N, C, H, W) in [0, 1] or an iterable
    of such batches (``draw_batches``: written as they come, of ``total`` images)."""
    from contextlib import nullcontext

    from torchvision.utils import save_image

    from .progress import Phase

    batches = [images] if isinstance(images, torch.Tensor) else images
    total = len(images) if isinstance(images, torch.Tensor) else total
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    i = 0
    with Phase(f"writing PNGs to {out}", total) if total and total >= 1000 else nullcontext() as phase:
        for batch in batches:
            for img in batch:
                name = f"{i // shard:05d}/{i:07d}.png"
                (out / name).parent.mkdir(exist_ok=True)
                save_image(img, out / name)
                rows.append((name, None if labels is None else int(labels[i])))
                i += 1
            if phase is not None:
                phase.advance(len(batch))
    if labels is not None:
        with open(out / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "label"])
            writer.writerows(rows)


@torch.no_grad()
def reconstruct_all(model, x: torch.Tensor, y: torch.Tensor | None, batch: int = 500,
                    across_processes: bool = True) -> torch.Tensor:
    """The posterior means of images x (N, C, H, W) decoded: float (N, C, H, W) in [0, 1], split across processes
    (every process must call it then; ``across_processes=False`` for work one process does alone)."""

    def chunk(i: int) -> torch.Tensor:
        part = slice(i * batch, (i + 1) * batch)
        labels = None if y is None or not model.is_conditional else y[part].to(model.device)
        return model.reconstruct(x[part].to(model.device), labels).float().cpu()

    count = math.ceil(len(x) / batch)
    return torch.cat(map_chunks(chunk, count) if across_processes else [chunk(i) for i in range(count)])
