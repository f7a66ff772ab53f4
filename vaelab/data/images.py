"""Image files: finding them in a folder and decoding them, the one decode path used by training, the latent tools
and the explorer (EXIF rotation, palette and alpha modes, 16-bit and float grayscale, resize and centre crop)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


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


def decode_image(source, channels: int | None, size: int | None):
    """Decode one image (a file path, a PIL image, or an array (H, W) / (H, W, C)) into a PIL image of ``channels``
    (1 or 3; None: the file's own), resized + centre-cropped to ``size`` (None: as it is).

    Handles EXIF rotation, palette and alpha modes, and 16-bit / 32-bit / float grayscale. Raises on any
    unreadable file; the caller decides whether that is a warning or an error.
    """
    from PIL import Image, ImageOps

    if isinstance(source, (str, Path)):
        with Image.open(source) as img:
            img.load()
            return _normalised(ImageOps.exif_transpose(img), channels, size)
    if not isinstance(source, Image.Image):
        array = np.asarray(source)
        source = Image.fromarray(array if array.dtype == np.uint8 else np.clip(array, 0, 255).astype(np.uint8))
    return _normalised(source, channels, size)


def _normalised(img, channels: int | None, size: int | None):
    from PIL import Image, ImageOps

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


def image_array(img, channels: int, size: int) -> np.ndarray:
    """A decoded PIL image -> uint8 array (size, size, channels)."""
    return np.array(img, dtype=np.uint8).reshape(size, size, channels)


def image_tensor(source, channels: int, size: int) -> torch.Tensor:
    """One image (as ``decode_image`` takes it) -> float32 (C, S, S) in [0, 1], ready for a model."""
    return torch.from_numpy(image_array(decode_image(source, channels, size), channels, size)).permute(2, 0, 1) / 255.0


def is_color(path: Path) -> bool | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    except Exception:
        return None


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
        x = torch.from_numpy(image_array(img, self.channels, self.size)).permute(2, 0, 1)
        y = -1 if self.labels is None else int(self.labels[j])
        return x, y


def read_image_files(root: str | Path, channels: int, size: int, limit: int | None = None):
    """Decode the images of a folder (sorted, recursive) for a model: (float32 (N, C, S, S) in [0, 1], paths).

    Unreadable files are skipped with a warning naming them.
    """
    files = scan_folder(Path(root))[:limit]
    arrays, kept, bad = [], [], []
    for f in files:
        try:
            img = decode_image(f, channels, size)
            arrays.append(image_array(img, channels, size))
            kept.append(f)
        except Exception as exc:
            bad.append(f"{f}: {type(exc).__name__}: {exc}")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable file(s):\n  " + "\n  ".join(bad[:20]))
    if not arrays:
        raise DataError(f"none of the image files under {root} could be read")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return x, kept
