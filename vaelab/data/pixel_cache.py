"""A folder's images decoded once into an on-disk uint8 array that every later run and verb memory-maps.

Decoding a photo folder is the slowest thing vaelab does with it (60,000 64-px JPEGs: a minute or more on 2 cores),
and a folder larger than memory cannot be held decoded at all. So the first load decodes every file in worker
processes into ``<cache>/pixels/<folder>-<id>/pixels.u8`` (uint8, (N, C, S, S), the files' sorted order) beside a
``manifest.json``; every later load maps that file (``numpy.memmap``: the operating system pages in what a batch
reads, so the process holds no copy of the set) and splits it by row indices.

The entry is keyed by the folder's path, the image size and the channels; the manifest records a SHA-256 over the
decode recipe and every file's relative path, size in bytes and modification time. A file added, removed, replaced
or touched, or a recipe change, makes the key differ and the folder is decoded again into the same entry.
``vaelab cache`` lists the entries and ``vaelab cache --clear`` removes them (``$VAELAB_CACHE`` moves the cache).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..paths import cache_dir

# Changed whenever the decode path changes what it produces (resampling, crop, colour conversion): every cached
# folder is then decoded again
DECODE_RECIPE = "decode_image v1: EXIF transpose, 16-bit/float to 8-bit, palette->RGBA, L/RGB, ImageOps.fit bicubic"
CHUNK_FILES = 256  # files one worker decodes per task
IN_PROCESS_BELOW = 2_000  # smaller folders decode in this process (starting workers costs more than it saves)


def pixel_cache_root() -> Path:
    return cache_dir() / "pixels"


def entry_folder(root: Path, channels: int, size: int) -> Path:
    """The cache entry of folder ``root`` decoded at ``channels`` x ``size`` px."""
    ident = hashlib.sha256(f"{root.resolve()}|{channels}|{size}".encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in root.resolve().name)[:40] or "folder"
    return pixel_cache_root() / f"{name}-{size}px-{channels}ch-{ident}"


def files_key(root: Path, files: list[Path], channels: int, size: int) -> str:
    """SHA-256 over the decode recipe, the shape and every file's relative path, size and modification time."""
    digest = hashlib.sha256(f"{DECODE_RECIPE}|{channels}|{size}\n".encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_chunk(task):
    """(start, files, channels, size) -> (start, uint8 (k, C, S, S) with zeros where a file failed, [(i, why)])."""
    from .images import decode_image, image_array

    start, files, channels, size = task
    out = np.zeros((len(files), channels, size, size), dtype=np.uint8)
    failed = []
    for i, f in enumerate(files):
        if os.path.getsize(f) == 0:
            failed.append((start + i, "empty file (0 bytes)"))
            continue
        try:
            out[i] = image_array(decode_image(f, channels, size), channels, size).transpose(2, 0, 1)
        except Exception as exc:  # noqa: BLE001  (any unreadable file is reported, never a crash mid-folder)
            failed.append((start + i, f"{type(exc).__name__}: {exc}"))
    return start, out, failed


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _decode_into(pixels: np.ndarray, files: list[Path], channels: int, size: int, what: str) -> list[tuple[int, str]]:
    """Decode ``files`` into ``pixels`` (N, C, S, S) with worker processes; the files that failed, (index, why)."""
    from ..progress import Phase

    tasks = [(i, [str(f) for f in files[i : i + CHUNK_FILES]], channels, size)
             for i in range(0, len(files), CHUNK_FILES)]
    workers = _workers() if len(files) >= IN_PROCESS_BELOW else 1
    failed: list[tuple[int, str]] = []
    with Phase(f"{what} ({workers} process{'es' if workers > 1 else ''})", len(files)) as phase:
        if workers == 1:
            results = map(_decode_chunk, tasks)
            pool = None
        else:  # fork where it exists: the workers decode with PIL alone, and start without importing anything
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = context.Pool(workers)
            results = pool.imap_unordered(_decode_chunk, tasks)
        try:
            for start, block, bad in results:
                pixels[start : start + len(block)] = block
                failed += bad
                phase.advance(len(block))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return sorted(failed)


def cached_pixels(root: Path, files: list[Path], channels: int, size: int) -> tuple[np.ndarray, list[tuple[int, str]], Path]:
    """The decoded pixels of ``files`` (uint8 (N, C, S, S), memory-mapped read-only-to-disk: writes stay private),
    the files that could not be decoded ((index into files, why); their rows are zeros) and the entry's folder.
    Decodes into the cache first where the entry is missing or its key differs."""
    entry = entry_folder(root, channels, size)
    manifest_path, pixels_path = entry / "manifest.json", entry / "pixels.u8"
    key = files_key(root, files, channels, size)
    shape = (len(files), channels, size, size)
    manifest = None
    if manifest_path.is_file() and pixels_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            manifest = None
    fresh = (manifest is not None and manifest.get("key") == key and manifest.get("shape") == list(shape)
             and pixels_path.stat().st_size == int(np.prod(shape)))
    if not fresh:
        why = "a new folder" if manifest is None else "the folder changed since it was decoded"
        entry.mkdir(parents=True, exist_ok=True)
        manifest_path.unlink(missing_ok=True)  # an entry without its manifest is never read as complete
        tmp = entry / f"pixels.u8.tmp-{os.getpid()}"
        start = time.perf_counter()
        pixels = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
        try:
            failed = _decode_into(pixels, files, channels, size,
                                  f"decoding {len(files):,} images ({why}) into {entry}")
            pixels.flush()
            del pixels
            os.replace(tmp, pixels_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        manifest = {"key": key, "shape": list(shape), "root": str(root.resolve()), "recipe": DECODE_RECIPE,
                    "failed": [[i, why] for i, why in failed], "seconds": time.perf_counter() - start}
        tmp_manifest = entry / f"manifest.json.tmp-{os.getpid()}"
        tmp_manifest.write_text(json.dumps(manifest) + "\n")
        os.replace(tmp_manifest, manifest_path)
    pixels = np.memmap(pixels_path, dtype=np.uint8, mode="c", shape=shape)
    return pixels, [(int(i), why) for i, why in manifest["failed"]], entry


def cache_entries() -> list[dict]:
    """Every cached folder: its entry folder, the folder it holds, its shape and size on disk."""
    entries = []
    for entry in sorted(pixel_cache_root().glob("*")) if pixel_cache_root().is_dir() else []:
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            manifest = {}
        size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        entries.append({"entry": str(entry), "root": manifest.get("root", "?"), "shape": manifest.get("shape"),
                        "bytes": size})
    return entries


def clear_cache() -> list[dict]:
    """Remove every cached folder; returns what was removed."""
    removed = cache_entries()
    for item in removed:
        shutil.rmtree(item["entry"], ignore_errors=True)
    return removed
