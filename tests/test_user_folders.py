"""A user's own small folder, end to end (issue 16): every verb on folders of awkward sizes works, or stops with a
one-line error that says what to change; never a traceback, never a lost epoch."""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import preset_names, read_preset

# best-weights tracking and the latent sampler's fit stay on, as a user has them: the score, its validation
# reference, the rule for too few validation images and the sampler's fit run on every folder size
TINY = ["--set", "model.widths=[8,16]", "--set", "model.latent_dim=4", "--set", "train.trackers=[]",
        "--no-progress"]


def split_sizes(count: int) -> tuple[int, int, int]:
    """(train, validation, test) images of an unlabelled folder of ``count`` readable images, from the documented
    rules: every 5th file is a test image (the last one below 5 files, then also trained on), and 1 in 8 of the rest
    (rounded) is held out for validation once there are at least 8 of them (per class in a labelled folder)."""
    test = len([i for i in range(count) if i % 5 == 4]) if count >= 5 else 1
    rest = count - test if count >= 5 else count
    validation = round(rest / 8) if rest >= 8 else 0
    return rest - validation, validation, test


def make_folder(root: Path, count: int, labels: str | None = None, seed: int = 0, broken: bool = True) -> Path:
    """``count`` PNGs of mixed modes (RGB, L, RGBA, P) and sizes around 16-80 px in three classes, plus one broken file.

    labels: None, "subfolders" (one folder per class) or "csv" (root/labels.csv with file,label)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for i in range(count):
        cls = i % 3
        folder = root / f"kind{cls}" if labels == "subfolders" else root
        folder.mkdir(exist_ok=True)
        side = int(rng.integers(16, 80))
        pixels = (rng.random((side, side + int(rng.integers(0, 9)), 3)) * 255 / (cls + 1)).astype(np.uint8)
        name = f"img{i:04d}.png"
        Image.fromarray(pixels).convert(["RGB", "L", "RGBA", "P"][i % 4]).save(folder / name)
        rows.append((str((folder / name).relative_to(root)), cls))
    if broken:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    if labels == "csv":
        with open(root / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "label"])
            writer.writerows(rows)
    return root


def invoke(args: list[str]):
    """Run one CLI verb in-process; fail the test on a traceback (anything but a clean exit or a one-line error).
    The warnings it gave are appended to ``result.warned`` (pytest would otherwise capture them)."""
    with warnings.catch_warnings(record=True) as caught:
        result = CliRunner().invoke(app, [str(a) for a in args])
    result.warned = "\n".join(str(w.message) for w in caught)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"`vaelab {' '.join(map(str, args))}` raised a traceback:\n{trace}\n{result.output}")
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert "error:" in result.output, result.output
    return result


def ok(args: list[str]) -> str:
    """The verb's output and warnings; it must succeed."""
    result = invoke(args)
    assert result.exit_code == 0, f"`vaelab {' '.join(map(str, args))}` failed:\n{result.output}"
    return result.output + result.warned


# (images, size, channels, labels): 1 image (the test split is the training image), fewer than one batch,
# test splits of 1-13 images (never a multiple of the grid's 8), one image either side of a batch multiple
CASES = [(1, 8, 1, None), (2, 8, 3, "subfolders"), (7, 28, 1, "csv"), (11, 32, 3, None),
         (13, 8, 1, "subfolders"), (63, 64, 3, "csv"), (65, 28, 1, None), (321, 96, 3, "subfolders")]


@pytest.mark.parametrize("count,size,channels,labels", CASES, ids=[f"{c[0]}img-{c[1]}px-{c[2]}ch-{c[3]}" for c in CASES])
def test_every_verb_on_a_user_folder(tmp_path, count, size, channels, labels):
    folder = make_folder(tmp_path / "data", count, labels)
    run, out = tmp_path / "run", tmp_path / "out"
    sets = ["--set", f"data.image_size={size}", "--set", f"data.channels={channels}"]
    if labels == "csv":
        sets += ["--set", f"data.labels_csv={folder / 'labels.csv'}"]
    # the preset's batch of 64 is shrunk to fit a folder smaller than one batch (and the user told)
    output = ok(["train", "--data", f"folder:{folder}", "--out", run, "--max-steps", 3, *TINY, *sets])
    assert "could not be read" in output and "broken.png" in output  # the broken file is named, then skipped
    if count <= 64:
        assert "training with batches of" in output
    assert (run / "model.safetensors").exists() and list((run / "checkpoints").glob("*.pt"))
    from vaelab.data import load_data
    from vaelab.run import RunFolder

    validation = len(load_data(RunFolder(run).read_config().data).validation)
    assert abs(validation - split_sizes(count)[1]) <= 2  # 1 in 8, rounded per class
    if validation >= 2:  # the run's weights were scored against the validation images and kept
        best = json.loads((run / "model-best.json").read_text())
        assert best["reference"] == "validation" and best["reference_images"] == validation
    else:  # too few to choose on: the last weights are the run's, and the user is told
        assert not (run / "model-best.safetensors").exists()
        assert "too few to choose the best epoch on" in output

    # fitted at the end of training, kept where the copy guard passes a candidate; else the prior, and said so
    from vaelab.samplers import refused_record

    refused = refused_record(run, "gmm")
    if validation < 2:  # nothing to measure copying against: never an unguarded density
        assert refused is not None and "fewer than 2 images" in refused["reason"]
    assert (run / "sampler-gmm.json").is_file() == (refused is None)
    sampled = ok(["sample", run, "-n", 5, "-o", out / "samples.png"])
    assert "gmm sampler" in sampled if refused is None else "kept no density" in sampled
    if labels is not None and refused is None:  # the per-class mixture gives an unconditional model --label
        ok(["sample", run, "-n", 3, "--label", 0, "-o", out / "zeros.png"])
    assert Image.open(out / "samples.png").size[0] > 0
    ok(["sample", run, "-n", 3, "-o", out / "pngs"])
    assert len(list((out / "pngs").rglob("*.png"))) == 3
    ok(["reconstruct", run, "-o", out / "recon.png"])
    ok(["reconstruct", run, "--images", folder, "-n", 4, "-o", out / "recon-own.png"])
    evaluated = ok(["evaluate", run, "--k", 4, "--no-utility", "--num-samples", 16])
    test_images = len([i for i in range(count) if i % 5 == 4]) or 1
    assert ("set-level metrics" in evaluated) == (test_images < 4)
    assert (run / "eval" / "metrics.json").exists()
    ok(["compare", run, run, "-o", out / "compare"])
    assert (out / "compare" / "report.html").exists()
    ok(["interpolate", run, "--from", 0, "--to", "seed:1", "--steps", 4, "-o", out / "interp.png"])
    ok(["anomaly", run, "--images", folder, "-o", out / "scores.csv"])
    with open(out / "scores.csv") as fh:
        assert len(list(csv.reader(fh))) == count + 1  # a header and one row per readable image
    ok(["latent-map", run, "-o", out / "map"])
    assert (out / "map" / "scatter.png").exists()

    attrs = invoke(["attributes", run])
    if labels is None:
        assert attrs.exit_code == 2 and "no labels or attributes" in attrs.output
        assert invoke(["edit", run, "--image", 0, "--attr", "x=1"]).exit_code == 2
    else:
        assert attrs.exit_code == 0, attrs.output
        name = re.search(r": (\S+?)(,|$)", attrs.output.strip().splitlines()[-1]).group(1)
        ok(["edit", run, "--image", 0, "--attr", f"{name}=1.5", "-o", out / "edit.png"])
        assert (out / "edit-sweep.png").exists()

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from vaelab.explore import Explorer, build_app

    explorer = Explorer(run)
    build_app(explorer)
    shown = explorer.decode(explorer.random(0))  # upscaled for the page
    assert shown.shape[0] == shown.shape[1] >= size and shown.std() > 0
    assert explorer.reconstruct((np.random.rand(40, 30, 3) * 255).astype(np.uint8)) is not None


def test_an_explicit_batch_larger_than_the_folder_is_a_clear_error(tmp_path):
    folder = make_folder(tmp_path / "data", 7)
    result = invoke(["train", "--data", f"folder:{folder}", "--out", tmp_path / "run", "--batch-size", 16,
                     "--max-steps", 2, "--set", "data.image_size=8", *TINY])
    assert result.exit_code == 2
    assert "train.batch_size=16" in result.output and "lower train.batch_size" in result.output


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 40), size=st.sampled_from([8, 12, 16, 28, 32]), channels=st.sampled_from([1, 3]),
       batch=st.integers(1, 40), grid=st.integers(0, 20))
def test_train_sample_reconstruct_any_small_folder(tmp_path_factory, count, size, channels, batch, grid):
    """Whatever the folder and settings: a trained run that samples and reconstructs, or a clear error when the
    explicit batch cannot fit the training split."""
    root = tmp_path_factory.mktemp("any")
    folder = make_folder(root / "data", count, broken=False)
    run = root / "run"
    train_images, _, _ = split_sizes(count)
    result = invoke(["train", "--data", f"folder:{folder}", "--out", run, "--batch-size", batch, "--max-steps", 2,
                     "--set", f"data.image_size={size}", "--set", f"data.channels={channels}",
                     "--set", f"train.num_sample_images={grid}", "--set", "train.sampler=prior", *TINY])
    if batch > train_images:
        assert result.exit_code == 2 and "lower train.batch_size" in result.output
        return
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").exists()
    ok(["sample", run, "-n", 3, "-o", root / "s.png"])
    ok(["reconstruct", run, "-n", 20, "-o", root / "r.png"])


def _other_size(preset: str) -> tuple[int, int]:
    """A size a user's folder might have that the preset was not written for: 64 px RGB for the 28 px digit presets,
    28 px grayscale for the others."""
    return (64, 3) if read_preset(preset)["data"]["name"] in ("mnist5k", "mnist", "digits") else (28, 1)


def _own_size(preset: str) -> tuple[int, int]:
    """The size and channels the preset was written for (its YAML's data.image_size, else its dataset's)."""
    data = read_preset(preset)["data"]
    native = {"mnist5k": (28, 1), "mnist": (28, 1), "fashion-mnist": (28, 1), "digits": (8, 1), "cifar10": (32, 3),
              "stl10": (96, 3), "stl10+unlabeled": (96, 3), "celeba": (64, 3)}[data["name"]]
    return data.get("image_size") or native[0], native[1]


def _train_on_folder(folder: Path, out: Path, preset: str, size: int, channels: int):
    return invoke(["train", "--preset", preset, "--data", f"folder:{folder}", "--out", out,
                   "--batch-size", 4, "--max-steps", 2, "--set", f"data.image_size={size}",
                   "--set", f"data.channels={channels}", "--set", "train.trackers=[]",
                   "--set", "train.num_sample_images=4", "--set", "train.sampler=prior", "--no-progress"])


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_trains_on_a_folder_of_another_size(tmp_path, preset):
    """Each preset's model at a size other than its own trains two steps, or refuses with an error that says the
    image size is what to change and then trains on the same folder at its own size (a preset that refused every
    size would fail here)."""
    size, channels = _other_size(preset)
    folder = make_folder(tmp_path / "data", 12, labels="subfolders", broken=False)
    result = _train_on_folder(folder, tmp_path / "run", preset, size, channels)
    if result.exit_code == 2:
        assert re.search(r"image.size", result.output), result.output  # says the size is what to change
        own = _train_on_folder(folder, tmp_path / "own", preset, *_own_size(preset))
        assert own.exit_code == 0, f"{preset} refuses {size} px and its own size {_own_size(preset)}:\n{own.output}"
        assert (tmp_path / "own" / "model.safetensors").exists()
        return
    assert (tmp_path / "run" / "model.safetensors").exists()
