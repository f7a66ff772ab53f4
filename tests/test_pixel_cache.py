"""The folder pixel cache (vaelab.data.pixel_cache): decoded once by worker processes, memory-mapped by every later
load, giving the same batches as a folder decoded in memory, and decoded again when a file or the shape changes."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import DataConfig
from vaelab.data import epoch_batches, image_chunks, iterate_batches, load_data, spaced_images
from vaelab.data import pixel_cache


def _photo_folder(root, n=40, size=20):
    """n small RGB images with different content in two class subfolders (and one unreadable file)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    return root


def _batches(split):
    order = epoch_batches(len(split), 4, seed=3, epoch=1, drop_last=False)
    return [(b["x"], b["y"]) for b in iterate_batches(split, order, torch.device("cpu"))]


def test_a_cached_folder_gives_the_batches_of_one_decoded_in_memory(tmp_path, monkeypatch):
    root = _photo_folder(tmp_path / "photos")
    monkeypatch.setattr(pixel_cache, "IN_PROCESS_BELOW", 0)  # decode in worker processes, as a large folder does
    with pytest.warns(UserWarning, match="broken.png"):
        cached = load_data(DataConfig(name=f"folder:{root}"))
    with pytest.warns(UserWarning, match="broken.png"):
        decoded = load_data(DataConfig(name=f"folder:{root}", cache=False))
    assert decoded.train.rows is None and cached.train.rows is not None
    assert cached.train.images is cached.test.images  # one memory-mapped array, split by rows: nothing copied
    for part in ("train", "validation", "test"):
        a, b = cached.split(part), decoded.split(part)
        assert len(a) == len(b) > 0 and torch.equal(a.labels, b.labels)
        for (xa, ya), (xb, yb) in zip(_batches(a), _batches(b), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(spaced_images(a, 5)[0], spaced_images(b, 5)[0])
        chunks = torch.cat([x for x, _ in image_chunks(a, chunk=3)])
        assert torch.equal(chunks, spaced_images(b, len(b))[0])


def test_the_cache_is_reused_and_decoded_again_when_a_file_or_the_size_changes(tmp_path, monkeypatch):
    root = _photo_folder(tmp_path / "photos", n=12)
    (root / "a" / "broken.png").unlink()
    cfg = DataConfig(name=f"folder:{root}", validation_fraction=0.0)
    first = load_data(cfg)
    entry = pixel_cache.entry_folder(root, 3, 20)
    assert (entry / "pixels.u8").stat().st_size == 12 * 3 * 20 * 20
    decodes = []
    real_decode = pixel_cache._decode_into
    monkeypatch.setattr(pixel_cache, "_decode_into", lambda *a, **k: decodes.append(a[1]) or real_decode(*a, **k))
    again = load_data(cfg)
    assert decodes == [] and torch.equal(again.train.take(torch.arange(len(again.train))),
                                         first.train.take(torch.arange(len(first.train))))
    # a file replaced by other pixels (same name): decoded again, and the new pixels are what batches hold
    target = sorted((root / "b").glob("*.png"))[0]
    Image.fromarray(np.full((20, 20, 3), 7, dtype=np.uint8)).save(target)
    os.utime(target, ns=(1, 1))  # another modification time, whatever the clock's resolution
    changed = load_data(cfg)
    assert len(decodes) == 1
    files = sorted(root.rglob("*.png"))
    row = files.index(target)
    assert int(changed.train.images[row].max()) == 7 == int(changed.train.images[row].min())
    # another image size is another entry, decoded once
    smaller = load_data(DataConfig(name=f"folder:{root}", validation_fraction=0.0, image_size=8))
    assert len(decodes) == 2 and smaller.train.images.shape[1:] == (3, 8, 8)
    assert pixel_cache.entry_folder(root, 3, 8) != entry
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["shape"] == [12, 3, 20, 20] and manifest["root"] == str(root.resolve())


def test_vaelab_cache_lists_and_clears_the_cached_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    root = _photo_folder(tmp_path / "photos", n=6)
    (root / "a" / "broken.png").unlink()
    load_data(DataConfig(name=f"folder:{root}"))
    listed = CliRunner().invoke(app, ["cache"])
    assert listed.exit_code == 0 and str(root.resolve()) in listed.output and "6x3x20x20" in listed.output
    cleared = CliRunner().invoke(app, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "removed" in cleared.output
    assert not any((tmp_path / "cache" / "pixels").iterdir())
    assert "no cached folders" in CliRunner().invoke(app, ["cache"]).output
