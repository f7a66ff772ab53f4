"""Any folder of images as a dataset: subfolders become classes, a labels CSV adds labels or attributes, every
5th file is a test image. Decoded once into the pixel cache and memory-mapped from there (``pixel_cache``); with
``data.cache: false``, decoded at every load: held in memory when it fits, decoded per batch otherwise."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .images import FolderStream, decode_image, image_array, is_color, scan_folder
from .labels_csv import read_labels_csv
from .splits import DataSplits, ImageSet, holdout_split, subset


def load_folder(root_text: str, cfg: DataConfig) -> DataSplits:
    """The dataset of ``data.name=folder:PATH`` (``root_text`` = PATH)."""
    root = Path(root_text).expanduser()
    files = scan_folder(root)
    rel_parts = [f.relative_to(root).parts for f in files]

    channels = cfg.channels
    if channels is None:  # colour if any of a sample of files is colour
        probe = files[:: max(1, len(files) // 64)]
        channels = 3 if any(is_color(f) for f in probe) else 1

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
            return image_array(img, channels, size), None
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    n_bytes = len(files) * channels * size * size
    in_memory = n_bytes < cfg.in_memory_limit_gb * 2**30
    skipped: list[tuple[str, str]] = []
    cached = None
    if cfg.cache:
        from .pixel_cache import cached_pixels

        pixels, failed, entry = cached_pixels(root, files, channels, size)
        bad = {i for i, _ in failed}
        keep = [i for i in range(len(files)) if i not in bad]
        skipped = [(str(files[i]), why) for i, why in failed]
        cached = torch.from_numpy(pixels)
    elif in_memory:
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
        csv_labels, csv_classes, attributes, attribute_names = read_labels_csv(Path(cfg.labels_csv), files, root)
        if csv_labels is not None:
            labels, class_names = csv_labels, csv_classes

    train_idx, test_idx = holdout_split(len(files))
    description = f"folder {root} ({len(files)} images, {channels} channel(s), {size} px)"
    if cached is not None:  # rows of the memory-mapped cache (which also holds the skipped files' empty rows)
        rows = torch.as_tensor(keep, dtype=torch.long)

        def rows_of(idx):
            idx_t = torch.as_tensor(idx, dtype=torch.long)
            return ImageSet(images=cached, rows=rows[idx_t], labels=None if labels is None else labels[idx_t],
                            attributes=None if attributes is None else attributes[idx_t])

        train, test = rows_of(train_idx), rows_of(test_idx)
        description += f", pixels cached in {entry}"
    elif in_memory:
        images = torch.from_numpy(np.stack([decoded[i][0] for i in keep])).permute(0, 3, 1, 2).contiguous()
        train = subset(images, labels, attributes, train_idx)
        test = subset(images, labels, attributes, test_idx)
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
