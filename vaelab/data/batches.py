"""Batches for training and evaluation: each epoch's order (a pure function of seed and epoch, so resume is exact),
float32 batches in [0, 1], and fixed subsets of a split."""

from __future__ import annotations

import math
from typing import Iterator

import torch

from .splits import ImageSet


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True,
                  rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """The index batches of one epoch for process ``rank`` of ``world``.

    The permutation is a pure function of (seed, epoch), so a resumed run can rebuild it and skip the
    batches it has already seen; global batch i goes to the processes as ``world`` consecutive slices.
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    else:
        order = torch.arange(n)
    step = batch_size * world
    count = n // step if drop_last else math.ceil(n / step)
    batches = []
    for i in range(count):
        chunk = order[i * step : (i + 1) * step]
        mine = chunk[rank * batch_size : (rank + 1) * batch_size]
        if len(mine):
            batches.append(mine)
    return batches


def iterate_batches(data: ImageSet, batches: list[torch.Tensor], device: torch.device,
                    num_workers: int = 0) -> Iterator[dict]:
    """Yield ``{"x": float32 (B, C, H, W) in [0, 1], "y": int64 (B,) or None, "index": (B,)}``."""
    if data.rows is not None:  # rows of a shared (memory-mapped) tensor: gathered as uint8, converted on the device
        pin = device.type == "cuda" and data.images.device.type == "cpu"
        for idx in batches:
            x = data.take(idx)
            x = (x.pin_memory() if pin else x).to(device, non_blocking=True)
            yield {"x": x.float().div_(255.0),
                   "y": None if data.labels is None else data.labels[idx].to(device),
                   "index": idx}
        return
    if data.images is not None:
        images = data.images if data.images.device == device else data.images.to(device)
        labels = None if data.labels is None else data.labels.to(device)
        for idx in batches:
            idx_dev = idx.to(device)
            yield {
                "x": images[idx_dev].float().div_(255.0),
                "y": None if labels is None else labels[idx_dev],
                "index": idx,
            }
        return
    loader = torch.utils.data.DataLoader(
        data.stream, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    for idx, (x, _) in zip(batches, loader):
        yield {
            "x": x.to(device, non_blocking=True).float().div_(255.0),
            "y": None if data.labels is None else data.labels[idx].to(device),
            "index": idx,
        }


def spaced_indices(total: int, n: int) -> torch.Tensor:
    """``min(n, total)`` indices spread evenly over ``range(total)``, int64."""
    n = min(n, total)
    return (torch.arange(n, dtype=torch.float64) * total / max(n, 1)).long()


def spaced_images(data: ImageSet, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` images spread evenly over a split, float32 (n, C, H, W) in [0, 1], and their labels (n,) or None.

    A split's order can follow its classes (mnist5k: 500 per class, sorted), so its first images are not a sample of
    it: the first 500 training images of mnist5k are 400 zeros and 100 ones."""
    idx = spaced_indices(len(data), n)
    labels = None if data.labels is None else data.labels[idx]
    return data.take(idx).float() / 255.0, labels


def first_images(data: ImageSet, n: int) -> torch.Tensor:
    """The first ``n`` images of a split as float32 (n, C, H, W) in [0, 1]."""
    return data.take(torch.arange(min(n, len(data)))).float() / 255.0


def image_chunks(data: ImageSet, n: int | None = None, chunk: int = 500, spaced: bool = False):
    """The first ``n`` images of a split (all when None; ``spaced``: ``n`` spread evenly over it) as float32 chunks
    (k, C, H, W) in [0, 1] with their labels (k,) or None: a split measured in pieces, never held as floats whole."""
    total = len(data) if n is None else min(n, len(data))
    idx = spaced_indices(len(data), total) if spaced else torch.arange(total)
    for start in range(0, total, chunk):
        part = idx[start : start + chunk]
        yield data.take(part).float() / 255.0, None if data.labels is None else data.labels[part]
