"""The in-memory form of every dataset: three ``ImageSet`` splits (train, validation, test) in a ``DataSplits``.

Train fits the weights, validation makes every choice (the best epoch, a sampler's settings, a preset's knobs), test
is measured once for the reported number. The validation split is carved from the source's training images
(``carve_validation``: a fixed, seeded, class-stratified share, ``data.validation_fraction``), so the test split of
every source stays what it always was.

An ImageSet holds its images as uint8 ``(N, C, H, W)``: a tensor of its own, or rows ``rows`` of a tensor shared
with the other splits (a folder's memory-mapped pixel cache, ``pixel_cache``: nothing is copied, the operating
system pages in what a batch reads); or, uncached and too large for memory, a ``stream`` dataset that decodes per
item inside DataLoader workers. Pixels stay uint8 until a batch is made (``take``, ``batches``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import DataError


@dataclass
class ImageSet:
    """One split. ``images``: uint8 (N, C, H, W), or (M, C, H, W) shared with other splits when ``rows`` (N,) says
    which of its rows are this split's; else ``stream`` yields (uint8 CHW, label)."""

    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # int64 (N,), or None when the data have no classes
    attributes: torch.Tensor | None = None  # float32 (N, A) from a labels CSV or CelebA
    stream: torch.utils.data.Dataset | None = None
    num_items: int = 0
    rows: torch.Tensor | None = None  # int64 (N,): this split's rows of ``images``; None: all of them, in order

    def __len__(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        return self.images.shape[0] if self.images is not None else self.num_items

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` (k,) of the split as uint8 (k, C, H, W), on the device ``images`` are on."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.images is None:
            return torch.stack([self.stream[int(i)][0] for i in idx]) if len(idx) else torch.zeros(0, dtype=torch.uint8)
        if self.rows is not None:
            idx = self.rows[idx]
        return self.images[idx.to(self.images.device)]

    def select(self, idx) -> "ImageSet":
        """The split of images ``idx`` (k,) of this one, labels and attributes included (rows of the same shared
        tensor where this split is: nothing is copied from a memory-mapped cache)."""
        return _take(self, np.asarray(idx, dtype=np.int64))


@dataclass
class DataSplits:
    train: ImageSet
    test: ImageSet
    channels: int
    image_size: int
    class_names: list[str] = field(default_factory=list)
    attribute_names: list[str] = field(default_factory=list)
    description: str = ""
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    validation: ImageSet = field(default_factory=ImageSet)  # empty until ``carve_validation``

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> ImageSet:
        """The split called ``name``: train, validation or test."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; the splits are {', '.join(SPLITS)}")
        return getattr(self, name)


SPLITS = ("train", "validation", "test")

# The split's permutation is a property of the data, not of a run: every run of a dataset holds out the same images
VALIDATION_SEED = 20_240_101
# Below this many training images no validation split is carved: every image is needed for training, and a choice
# on a handful of images could not be trusted anyway (the run then keeps its last weights, and says so)
MIN_TRAIN_FOR_VALIDATION = 8


def validation_indices(n: int, fraction: float, labels: torch.Tensor | None) -> np.ndarray:
    """The sorted indices of ``range(n)`` that form the validation split: ``round(fraction * n_c)`` of each class c
    (of all n without labels), drawn by a permutation seeded with VALIDATION_SEED. Empty when ``fraction`` is 0 or
    ``n < MIN_TRAIN_FOR_VALIDATION``."""
    if fraction <= 0 or n < MIN_TRAIN_FOR_VALIDATION:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(VALIDATION_SEED).permutation(n)
    if labels is None:
        groups = [order]
    else:
        label_of = labels.numpy()[order]
        groups = [order[label_of == c] for c in np.unique(label_of)]
    picked = [g[: int(round(fraction * len(g)))] for g in groups]
    chosen = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    if len(chosen) == 0:  # every class too small to give one image: take one image overall
        chosen = np.sort(order[:1])
    return chosen.astype(np.int64)


def _take(split: ImageSet, idx: np.ndarray) -> ImageSet:
    """The images ``idx`` of a split, in memory, as rows of a shared tensor, or streamed."""
    if split.rows is not None:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(images=split.images, rows=split.rows[idx_t],
                        labels=None if split.labels is None else split.labels[idx_t],
                        attributes=None if split.attributes is None else split.attributes[idx_t])
    if split.images is not None:
        return subset(split.images, split.labels, split.attributes, idx)
    idx_t = torch.as_tensor(idx, dtype=torch.long)
    return ImageSet(stream=torch.utils.data.Subset(split.stream, idx.tolist()),
                    labels=None if split.labels is None else split.labels[idx_t],
                    attributes=None if split.attributes is None else split.attributes[idx_t],
                    num_items=len(idx))


def carve_validation(data: DataSplits, fraction: float) -> DataSplits:
    """Move ``validation_indices`` of the training split into ``data.validation`` (stratified by class)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"data.validation_fraction must lie in [0, 1), got {fraction}")
    n = len(data.train)
    val_idx = validation_indices(n, fraction, data.train.labels)
    keep = np.setdiff1d(np.arange(n), val_idx)
    data.validation = _take(data.train, val_idx)
    data.train = _take(data.train, keep)
    data.description += f", validation {len(val_idx)} held out of {n} training images"
    return data


def holdout_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The split used for embedded and folder data: test = indices with ``i % 5 == 4``."""
    idx = np.arange(n)
    test = idx[idx % 5 == 4]
    if len(test) == 0:  # fewer than 5 images: hold out the last one rather than nothing
        test = idx[-1:]
    return idx[idx % 5 != 4] if n >= 5 else idx, test


def subset(images: torch.Tensor, labels, attributes, idx) -> ImageSet:
    idx = torch.as_tensor(idx, dtype=torch.long)
    return ImageSet(
        images=images[idx].contiguous(),
        labels=None if labels is None else labels[idx],
        attributes=None if attributes is None else attributes[idx],
    )


def reshape_uint8(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert uint8 (N, C, H, W) to ``channels`` and resize (shorter side) + centre-crop to ``size``."""
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images.contiguous()
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    out = []
    for chunk in images.split(1024):
        resized = F.interpolate(chunk.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out.append(resized[..., top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out).contiguous()


def from_arrays(images: torch.Tensor, labels, cfg: DataConfig, class_names, description) -> DataSplits:
    """uint8 images (N, C, H, W) and labels (N,) -> splits at the config's channels and size (``holdout_split``)."""
    channels = cfg.channels or images.shape[1]
    size = cfg.image_size or images.shape[-1]
    images = reshape_uint8(images, channels, size)
    train_idx, test_idx = holdout_split(images.shape[0])
    return DataSplits(
        train=subset(images, labels, None, train_idx),
        test=subset(images, labels, None, test_idx),
        channels=channels,
        image_size=size,
        class_names=class_names,
        description=description,
    )


def keep_classes(data: DataSplits, keep: list[int]) -> DataSplits:
    """Only the images whose label is in ``keep`` (labels keep their original numbers)."""
    if data.train.labels is None:
        raise DataError(f"data.include_classes needs class labels, and {data.description} has none")
    for part in SPLITS:
        split = getattr(data, part)
        if len(split) == 0:
            continue
        if split.images is None:
            raise DataError("data.include_classes works on datasets held in memory or in the pixel cache")
        mask = torch.isin(split.labels, torch.tensor(keep))
        setattr(data, part, _take(split, mask.nonzero().flatten().numpy()))
    if len(data.train) == 0:
        raise DataError(f"data.include_classes={keep} keeps no images; classes are 0..{data.num_classes - 1}")
    data.description += f", classes {keep} only"
    return data
