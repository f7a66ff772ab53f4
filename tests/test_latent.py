"""Using a trained model: interpolate, attributes + edit, anomaly, latent maps, PNG export."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_overrides
from vaelab import load
from vaelab.cli import app
from vaelab.config import DataConfig, load_config
from vaelab.data import first_images, load_data
from vaelab.metrics.features import train_and_save_classifier
from vaelab.latent import slerp
from vaelab.metrics.features import load_classifier
from vaelab.training import train

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    # the default architecture, 5 epochs: good enough that reconstructions and edits are recognisable digits
    train(load_config(overrides=["train.epochs=5", "train.trackers=[]", "train.num_sample_images=16",
                              "train.sampler=prior"]),
          root / "vae", progress=False)
    train(load_config(preset="cvae-mnist", overrides=tiny_overrides(vae=False, **{"train.epochs": 2})), root / "cvae",
          progress=False)
    return root


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_slerp_keeps_the_norm_between_orthogonal_unit_vectors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b, atol=1e-6)


def test_interpolation_end_points_reconstruct_the_inputs(runs, tmp_path):
    run = runs / "vae"
    invoke("interpolate", run, "--from", 0, "--to", 5, "--steps", 6, "--out", tmp_path / "i.png")
    with Image.open(tmp_path / "i.gif") as gif:
        assert gif.n_frames == 10  # there and back
    grid = np.asarray(Image.open(tmp_path / "i.png").convert("L"), dtype=np.float32) / 255
    tile = lambda j: grid[1:29, 1 + 29 * j : 29 + 29 * j]  # 8 tiles: input, 6 steps, input
    model = load(run)
    x = first_images(load_data(DataConfig()).test, 6)
    recon = model.reconstruct(x).numpy()
    assert np.abs(tile(1) - recon[0, 0]).mean() < 0.02  # the first step is the reconstruction of input 0
    assert np.abs(tile(6) - recon[5, 0]).mean() < 0.02
    assert np.abs(tile(0) - x[0, 0].numpy()).mean() < 0.01  # the input itself is shown beside it
    # end points are closer to their own inputs than to the other end's input
    assert np.abs(tile(1) - tile(0)).mean() < np.abs(tile(1) - tile(7)).mean()
    invoke("interpolate", run, "--from", "seed:1", "--to", "seed:2", "--slerp", "--out", tmp_path / "s.png")


def test_attribute_edit_turns_a_3_into_an_8(runs, tmp_path):
    run = runs / "vae"
    out = invoke("attributes", run)
    assert "class_8" in out and (run / "attributes.safetensors").is_file()
    classifier_dir = tmp_path / "clf"
    info = train_and_save_classifier(load_data(DataConfig()), classifier_dir, epochs=5, progress=False)
    assert info["test_accuracy"] > 0.9
    classifier = load_classifier(classifier_dir)
    test = load_data(DataConfig()).test
    threes = (test.labels == 3).nonzero().flatten()[:10].tolist()
    gains = []
    for index in threes:
        invoke("edit", run, "--image", index, "--attr", "class_8=1.5", "--attr", "class_3=-1.5", "--out", tmp_path / "e.png")
        grid = np.asarray(Image.open(tmp_path / "e.png").convert("L"), dtype=np.float32) / 255
        recon, edited = grid[1:29, 30:58], grid[1:29, 59:87]
        batch = torch.tensor(np.stack([recon, edited]))[:, None]
        p8 = torch.softmax(classifier(batch)[1], 1)[:, 8]
        gains.append(float(p8[1] - p8[0]))
    assert np.mean(gains) > 0.2, gains  # the edit moves the classifier's belief towards 8
    assert (tmp_path / "e-sweep.png").is_file()


def test_anomaly_scores_roc_auc_and_csv(runs, tmp_path):
    out = invoke("anomaly", runs / "vae", "--data", "mnist5k", "--anomalous-classes", "9", "--out", tmp_path / "a.csv")
    assert "ROC-AUC" in out
    rows = list(csv.reader(open(tmp_path / "a.csv")))
    assert rows[0] == ["file", "score", "label"] and len(rows) == 1001
    assert (tmp_path / "a.png").is_file()
    folder = tmp_path / "imgs"
    folder.mkdir()
    x = first_images(load_data(DataConfig()).test, 4)
    for i, img in enumerate(x):
        Image.fromarray((img[0].numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / "noise.png")
    (tmp_path / "l.csv").write_text("file,label\n0.png,0\n1.png,0\n2.png,0\n3.png,0\nnoise.png,1\n")
    out = invoke("anomaly", runs / "vae", "--images", folder, "--labels", tmp_path / "l.csv", "--score", "iwae",
                 "--k", 20, "--out", tmp_path / "b.csv")
    assert "ROC-AUC 1.0000" in out  # noise is far less likely than digits


def test_latent_maps(runs, tmp_path):
    out = invoke("latent-map", runs / "cvae", "--out", tmp_path / "m")
    assert (tmp_path / "m" / "manifold.png").is_file() and "scatter.png (latent)" in out
    assert Image.open(tmp_path / "m" / "manifold.png").size == (20 * 29 + 1, 20 * 29 + 1)
    out = invoke("latent-map", runs / "vae", "--out", tmp_path / "p")
    assert "PCA" in out and not (tmp_path / "p" / "manifold.png").exists()


def test_sample_png_export_with_labels(runs, tmp_path):
    invoke("sample", runs / "cvae", "--num", 25, "--out", tmp_path / "syn")
    files = sorted((tmp_path / "syn").rglob("*.png"))
    assert len(files) == 25 and Image.open(files[0]).size == (28, 28)
    rows = list(csv.reader(open(tmp_path / "syn" / "labels.csv")))
    assert rows[0] == ["file", "label"] and rows[4][1] == "3"
    out = runner.invoke(app, ["sample", str(runs / "cvae"), "--num", "4", "--label", "7", "--out", str(tmp_path / "s.npz")])
    assert out.exit_code == 0 and np.load(tmp_path / "s.npz")["labels"].tolist() == [7, 7, 7, 7]
    bad = runner.invoke(app, ["sample", str(runs / "cvae"), "--label", "12"])
    assert bad.exit_code == 2 and "out of range" in bad.output
