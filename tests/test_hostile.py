"""Hostile inputs: every case ends in a clear VaelabError or a counted skip, never a traceback from deep inside."""

import io
import os
import re
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaelab.config import DataConfig, apply_overrides, build_config, read_preset
from vaelab.data import load_data, read_image_files
from vaelab.errors import ConfigError, DataError, VaelabError
from vaelab.models import build_model, model_names

EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif"]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _good_png(value=128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), value).save(buf, format="PNG")
    return buf.getvalue()


@FUZZ
@given(blobs=st.lists(st.tuples(st.binary(max_size=400), st.sampled_from(EXTENSIONS)), min_size=1, max_size=6))
def test_random_bytes_with_image_extensions_are_skipped_or_rejected(tmp_path_factory, blobs):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "good.png").write_bytes(_good_png())
    for i, (blob, ext) in enumerate(blobs):
        (root / f"f{i}{ext}").write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_data(DataConfig(name=f"folder:{root}", image_size=8))
    kept = int(re.search(r"\((\d+) images", data.description).group(1))
    assert kept >= 1 and kept + len(data.skipped_files) == 1 + len(blobs)  # each file kept or listed as skipped


@FUZZ
@given(cut=st.floats(0.05, 0.95), fmt=st.sampled_from(["PNG", "JPEG"]))
def test_truncated_files_are_skipped(tmp_path_factory, cut, fmt):
    root = tmp_path_factory.mktemp("trunc")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format=fmt)
    blob = buf.getvalue()
    (root / "ok.png").write_bytes(_good_png())
    (root / f"cut.{fmt.lower()}").write_bytes(blob[: int(len(blob) * cut)])
    with pytest.warns(UserWarning):
        data = load_data(DataConfig(name=f"folder:{root}", image_size=8, channels=1))
    assert len(data.skipped_files) == 1 and "cut." in data.skipped_files[0][0]


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 100 x 100 image now counts as a bomb (> 2x limit)
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    (tmp_path / "ok.png").write_bytes(_good_png())
    with pytest.raises(DataError, match="(?s)bomb.png: DecompressionBombError"):
        load_data(DataConfig(name=f"folder:{tmp_path}", image_size=8, strict=True))


def test_cmyk_exif_rotation_broken_links_and_odd_names(tmp_path):
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red in CMYK
    tall = Image.new("L", (6, 12), 0)
    tall.paste(255, (0, 0, 6, 6))  # white top half
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    tall.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    os.symlink(tmp_path / "missing.png", tmp_path / "dangling.png")
    weird = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.png"
    with open(weird, "wb") as fh:
        fh.write(_good_png(200))
    with pytest.warns(UserWarning, match="dangling.png"):
        x, files = read_image_files(tmp_path, channels=3, size=12)
    names = [f.name for f in files]
    assert "cmyk.jpg" in names and "rotated.jpg" in names and len(files) == 3
    cmyk = x[names.index("cmyk.jpg")]
    assert cmyk[0].mean() > 0.8 and cmyk[1].mean() < 0.2  # red, not garbage
    rot = x[names.index("rotated.jpg")].mean(0)
    # displayed upright, the white half is on the right: the EXIF rotation was applied
    assert rot[:, 6:].mean() > 0.7 and rot[:, :6].mean() < 0.3


def test_a_folder_of_100000_empty_files_fails_fast(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    for i in range(100_000):
        (root / f"{i:06d}.png").touch()
    start = time.perf_counter()
    with pytest.raises(DataError, match="none of the 100000 image file"):
        with pytest.warns(UserWarning):
            load_data(DataConfig(name=f"folder:{root}", image_size=8, channels=1))
    assert time.perf_counter() - start < 60


# ---- configs and models -------------------------------------------------------------------------------------

VALUES = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                   st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=5))


@FUZZ
@given(section=st.sampled_from(["data", "model", "train"]), key=st.one_of(st.text(max_size=15), st.sampled_from(
    ["latent_dim", "widths", "epochs", "batch_size", "image_size", "channels", "lr", "precision", "likelihood", "beta"])),
    value=VALUES, preset=st.sampled_from(["vae-mnist", "cvae-mnist", "dcgan-mnist", "avae-khan-mnist", "gvae-sagar-mnist"]))
def test_config_fuzz_gives_config_errors_only(section, key, value, preset):
    raw = read_preset(preset)
    try:
        build_config(apply_overrides(raw, [f"{section}.{key}={value}"]))
    except ConfigError as exc:
        assert str(exc)  # a message, not a bare exception


@FUZZ
@given(name=st.sampled_from(model_names()), size=st.integers(1, 200), channels=st.sampled_from([1, 3]),
       latent=st.integers(1, 64))
def test_any_image_size_builds_or_gives_a_clear_error(name, size, channels, latent):
    raw = read_preset({"vae": "vae-mnist", "cvae": "cvae-mnist", "ssim_vae": "dcvae-ssim-mnist", "dcgan": "dcgan-mnist",
                       "wgan_gp": "wgan-gp-mnist", "acgan": "acgan-mnist", "vaegan": "vaegan-mnist",
                       "gvae": "gvae-sagar-mnist", "avae": "avae-khan-mnist", "began_star": "began-star-mnist"}[name])
    try:
        cfg = build_config(apply_overrides(raw, [f"model.latent_dim={latent}"]))
        cfg.model.image_size, cfg.model.channels = size, channels
        if hasattr(cfg.model, "num_classes"):
            cfg.model.num_classes = 10
        cfg.model.validate()
        model = build_model(cfg.model)
    except VaelabError:
        return
    import torch

    with torch.no_grad():
        y = torch.zeros(2, dtype=torch.long) if model.is_conditional else None
        assert model.sample(2, y=y).shape == (2, channels, size, size)
