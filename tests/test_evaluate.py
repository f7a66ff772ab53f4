"""vaelab evaluate / compare / train-classifier / train --sweep on tiny trained runs."""

import csv
import json

import pytest
from typer.testing import CliRunner

from conftest import tiny_overrides
from vaelab.cli import app
from vaelab.config import DataConfig, load_config
from vaelab.data import load_data
from vaelab.evaluate import evaluate, train_and_save_classifier
from vaelab.compare import compare
from vaelab.errors import VaelabError
from vaelab.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    train(load_config(overrides=tiny_overrides(**{"train.epochs": 2})), root / "vae", progress=False)
    train(load_config(preset="cvae-mnist", overrides=tiny_overrides(**{"train.epochs": 2})), root / "cvae", progress=False)
    train(load_config(preset="dcgan-mnist", overrides=[*tiny_overrides(vae=False), "train.max_steps=10",
          "model.generator_widths=[8, 16]", "model.discriminator_widths=[8, 16]"]), root / "gan", progress=False)
    info = train_and_save_classifier(load_data(DataConfig()), root / "clf", epochs=2, progress=False)
    return root, info


def test_classifier_is_useful(runs):
    _, info = runs
    assert info["test_accuracy"] > 0.8  # a real domain classifier, not noise


def test_evaluate_vae_writes_every_metric_with_settings(runs):
    root, _ = runs
    result = evaluate(root / "vae", num_samples=200, features=[f"classifier:{root / 'clf'}", "pixels"], k=20,
                      progress=False)
    lik = result["likelihood"]
    assert lik["settings"]["importance_samples"] == 20 and lik["settings"]["images"] == 1000
    assert lik["iwae_nats"] >= lik["elbo_nats"] - 0.5 and lik["iwae_bits_per_dim"] > 0
    assert 0 < lik["reconstruction_mse_per_pixel"] < 0.2 and lik["kl_nats"] > 0
    space = result["sample_metrics"]["features"][f"classifier:{root / 'clf'}"]
    for key in ("fid", "kid", "is", "precision", "recall", "class_coverage"):
        assert key in space
    assert space["fid"] > 0 and 1 <= space["is"] <= 10
    assert "pixels" in result["sample_metrics"]["features"]
    ms = result["sample_metrics"]["ms_ssim_samples"]
    assert (ms["ms_ssim_scales"], ms["ms_ssim_window"]) == (3, 7)
    saved = json.loads((root / "vae" / "eval" / "metrics.json").read_text())
    assert saved["likelihood"]["iwae_nats"] == lik["iwae_nats"]
    report = (root / "vae" / "eval" / "report.md").read_text()
    assert "K = 20 importance samples" in report and "median heuristic" in report
    assert (root / "vae" / "eval" / "samples.png").is_file() and (root / "vae" / "eval" / "class_histogram.png").is_file()


def test_binarized_protocol_changes_the_likelihood(runs):
    root, _ = runs
    plain = evaluate(root / "vae", num_samples=50, features=["pixels"], k=5, progress=False)["likelihood"]
    binar = evaluate(root / "vae", num_samples=50, features=["pixels"], k=5, binarized=True, progress=False)["likelihood"]
    assert binar["settings"]["binarized"] and binar["elbo_nats"] != plain["elbo_nats"]


def test_evaluate_conditional_model_has_utility_and_gan_has_no_likelihood(runs):
    root, _ = runs
    result = evaluate(root / "cvae", num_samples=200, features=[f"classifier:{root / 'clf'}"], k=5, utility_epochs=3,
                      progress=False)
    util = result["synthetic_utility"]
    assert 0 <= util["classification_accuracy_score"] <= 1 and "augmentation_gain" in util
    # the 10% subset gets as many optimizer steps as the full set: a trained classifier, not chance
    assert util["subset_10pct_accuracy"] > 0.6 and util["real_data_accuracy"] > 0.6
    space = result["sample_metrics"]["features"][f"classifier:{root / 'clf'}"]
    from vaelab.evaluate import headline

    # the label accuracy is the share of samples drawn for class k that the classifier calls k, shown in the table
    assert headline(result)["label_accuracy_clf"] == space["conditional_accuracy"]
    assert 0 <= space["conditional_accuracy"] <= 1
    gan = evaluate(root / "gan", num_samples=200, features=["pixels"], progress=False)
    assert "likelihood" not in gan and "fid" in gan["sample_metrics"]["features"]["pixels"]


def test_inception_without_weights_says_where_to_put_them(runs, tmp_path, monkeypatch):
    root, _ = runs
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(VaelabError, match="weights-inception-2015-12-05-6726825d.pth.*hub/checkpoints"):
        evaluate(root / "gan", num_samples=20, features=["inception"], progress=False)


def test_compare_report(runs, tmp_path):
    root, _ = runs
    for name in ("vae", "gan"):  # measured alike, so the sample metrics rank
        evaluate(root / name, num_samples=200, features=["pixels"], k=5, progress=False)
    out = compare([root / "vae", root / "gan"], tmp_path / "cmp")
    md = (out / "report.md").read_text()
    assert "| fid_pixels |" in md and "**" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 3 and "<b>" in html
    with open(out / "metrics.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][0] == "run" and [r[0] for r in rows[1:]] == ["vae", "gan"]
    train(load_config(overrides=tiny_overrides(**{"train.max_steps": 2})), tmp_path / "fresh", progress=False)
    with pytest.raises(VaelabError, match="has not been evaluated"):
        compare([tmp_path / "fresh"], tmp_path / "cmp2")


def test_cli_evaluate_and_sweep(runs, tmp_path, monkeypatch):
    root, _ = runs
    runner = CliRunner()
    out = runner.invoke(app, ["evaluate", str(root / "gan"), "--num-samples", "100", "--features", "pixels"])
    assert out.exit_code == 0, out.output
    assert "fid_pixels" in out.output
    monkeypatch.chdir(tmp_path)
    sets = [a for s in tiny_overrides(**{"train.max_steps": 2}) for a in ("--set", s)]
    out = runner.invoke(app, ["train", "--sweep", "model.latent_dim=2,3", "--no-progress", *sets])
    assert out.exit_code == 0, out.output
    for value in (2, 3):
        cfg = (tmp_path / "runs" / f"vae-mnist-latent_dim-{value}" / "config.yaml").read_text()
        assert f"latent_dim: {value}" in cfg


def test_compare_ranks_only_numbers_measured_alike(runs, tmp_path):
    """Bernoulli ELBOs on grey levels are never ranked; binarized alike they are, but IWAE bounds with different K
    are not (and the row says why); sample metrics in one feature space still rank."""
    import shutil

    root, _ = runs
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(root / "vae", a)
    shutil.copytree(root / "vae", b)
    evaluate(a, num_samples=50, features=["pixels"], k=5, progress=False)
    evaluate(b, num_samples=50, features=["pixels"], k=5, seed=1, progress=False)
    md = (compare([a, b], tmp_path / "c1") / "report.md").read_text()
    row = lambda name: next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
    for name in ("elbo_nats", "iwae_nats"):
        assert "not normalised" in row(name) and "**" not in row(name)
    assert "**" in row("fid_pixels") and row("fid_pixels").endswith("|  |")
    evaluate(a, num_samples=50, features=["pixels"], k=5, binarized=True, progress=False)
    evaluate(b, num_samples=50, features=["pixels"], k=7, binarized=True, progress=False)
    md = (compare([a, b], tmp_path / "c2") / "report.md").read_text()
    assert "**" in row("elbo_nats") and row("elbo_nats").endswith("|  |")
    assert "importance_samples" in row("iwae_nats") and "**" not in row("iwae_nats")
