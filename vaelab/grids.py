"""Image grids: samples, and originals above their reconstructions (used by training, the CLI and the explorer)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import save_image


def grid_nrow(n: int) -> int:
    """Images per row of a square-ish grid of ``n``."""
    return int(math.ceil(math.sqrt(n)))


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    """images (N, C, H, W) in [0, 1] -> one PNG grid at ``path`` (its folder is made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().cpu(), path, nrow=nrow or grid_nrow(len(images)), padding=1)


def originals_over_reconstructions(x: torch.Tensor, recon: torch.Tensor, per_row: int = 8) -> tuple[torch.Tensor, int]:
    """x, recon (N, C, H, W) -> (grid images, images per row): a row of originals above the row of their
    reconstructions, row by row; a short last row is filled with blank images so that the pairs stay aligned."""
    per_row = max(1, min(per_row, len(x)))
    pad = (-len(x)) % per_row
    x, recon = (torch.cat([t.float().cpu(), t.new_zeros(pad, *t.shape[1:]).float().cpu()]) for t in (x, recon))
    rows = [t for i in range(0, len(x), per_row) for t in (x[i : i + per_row], recon[i : i + per_row])]
    return torch.cat(rows), per_row
