"""vaelab evaluate / compare / train-classifier / train --sweep on tiny trained runs."""

import csv
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_overrides
from vaelab.cli import app
from vaelab.config import DataConfig, load_config
from vaelab.data import load_data
from vaelab.data import first_images
from vaelab.evaluate import evaluate, generate
from vaelab.evaluation_report import better, headline
from vaelab.metrics import samples as sm
from vaelab.metrics.features import ClassifierExtractor, train_and_save_classifier
from vaelab.run import load
from vaelab.compare import compare, settings_for
from vaelab.errors import VaelabError
from vaelab.training import train


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
    # against the model's own encoder and decoder on the 1,000 test images, computed here: the posterior mean's
    # reconstruction error (deterministic), the closed-form KL, and the ELBO from its two terms
    model = load(root / "vae")
    x = first_images(load_data(model.run_config.data).test, 1000)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mse = (model.reconstruct(x) - x).pow(2).mean()
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean()
    assert lik["reconstruction_mse_per_pixel"] == pytest.approx(float(mse), rel=1e-4)
    assert lik["kl_nats"] == pytest.approx(float(kl), rel=1e-4)
    assert lik["elbo_nats"] == pytest.approx(-lik["reconstruction_nll_nats"] - lik["kl_nats"], rel=1e-6)
    assert lik["iwae_bits_per_dim"] == pytest.approx(-lik["iwae_nats"] / (784 * math.log(2)), rel=1e-9)
    assert lik["iwae_nats"] >= lik["elbo_nats"] - 0.5  # K = 20 tightens the bound (up to its sampling noise)
    assert lik["normalised"] is False  # a Bernoulli bound on grey levels, flagged: nothing ranks it
    space = result["sample_metrics"]["features"][f"classifier:{root / 'clf'}"]
    for key in ("fid", "kid", "is", "precision", "recall", "class_coverage"):
        assert key in space
    # the sample side against the same features computed here from the evaluation's own draws (seed stream
    # evaluate_samples, chunks of 500) and the test images
    fake, _ = generate(model, 200, 0, 10)
    extractor = ClassifierExtractor(root / "clf")
    f_real, logits_real = extractor.embed(x)
    f_fake, logits_fake = extractor.embed(fake)
    assert space["fid"] == pytest.approx(sm.fid(f_real, f_fake), rel=1e-6)
    pr = sm.precision_recall(f_real, f_fake, k=3)
    assert all(space[k] == pytest.approx(pr[k]) for k in ("precision", "recall", "coverage", "density"))
    assert space["class_coverage"]["class_histogram"] == torch.bincount(logits_fake.argmax(1), minlength=10).tolist()
    assert "pixels" in result["sample_metrics"]["features"]
    # reconstructions are measured against the same real images: in pixel space a perfect decoder scores FID 0, so
    # the decoder's FID must be positive, and below the samples' (the codes come from the real images)
    recon = result["sample_metrics"]["features"]["pixels"]["reconstructions"]
    assert 0 < recon["fid"] < result["sample_metrics"]["features"]["pixels"]["fid"]
    assert 0 <= recon["precision"] <= 1 and 0 <= recon["recall"] <= 1
    assert headline(result)["recon_fid_pixels"] == recon["fid"] and better("recon_fid_pixels") is False
    # compare ranks it only between runs measured in the same feature space
    assert "space_pixels" in settings_for("recon_fid_pixels") and "samples" not in settings_for("recon_fid_pixels")
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
    assert util["augmentation_gain"] == pytest.approx(util["subset_10pct_plus_generated_accuracy"]
                                                      - util["subset_10pct_accuracy"])
    # the 10% subset gets as many optimizer steps as the full set: a trained classifier, not chance
    assert util["subset_10pct_accuracy"] > 0.6 and util["real_data_accuracy"] > 0.6
    space = result["sample_metrics"]["features"][f"classifier:{root / 'clf'}"]
    # the label accuracy is the share of samples drawn for class k that the classifier calls k, shown in the table:
    # computed here from the evaluation's own draws (labels 0, 1, ..., 9, 0, ...)
    assert headline(result)["label_accuracy_clf"] == space["conditional_accuracy"]
    fake, labels = generate(load(root / "cvae"), 200, 0, 10)
    assert labels.tolist() == [i % 10 for i in range(200)]
    _, logits = ClassifierExtractor(root / "clf").embed(fake)
    assert space["conditional_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    gan = evaluate(root / "gan", num_samples=200, features=["pixels"], progress=False)
    assert "likelihood" not in gan and "fid" in gan["sample_metrics"]["features"]["pixels"]
    assert "reconstructions" not in gan["sample_metrics"]["features"]["pixels"]  # a GAN has no encoder


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
    # the verdict names the run with the lower FID, the higher recall: read from what `evaluate` wrote into each run,
    # not from the table compare made
    measured = {name: json.loads((root / name / "eval" / "metrics.json").read_text())["sample_metrics"]["features"]
                ["pixels"] for name in ("vae", "gan")}
    lower_fid = min(measured, key=lambda n: measured[n]["fid"])
    higher_recall = max(measured, key=lambda n: measured[n]["recall"])
    verdict = md.split("## Verdict")[1].split("## All metrics")[0]
    assert f"| fidelity (sharp, on-manifold samples) | fid_pixels | {lower_fid} (" in verdict
    assert f"| diversity and coverage (no mode collapse) | recall_pixels | {higher_recall} (" in verdict
    assert (out / "precision_recall.png").is_file() and (out / "quality_vs_time.png").is_file()
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


def test_verdict_scores_seed_groups_and_calls_ties_within_seed_noise(tmp_path):
    """Runs of one config differing only in seed are one entry of the verdict (mean ± std); a group whose mean is
    within the seed spread of the best ties with it, one outside does not."""
    import yaml

    def fake_run(name, preset, seed, fid, recall):
        run = tmp_path / name
        (run / "eval").mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"name": preset, "model": {"name": "vae"},
                                                         "train": {"seed": seed, "epochs": 3}}))
        space = {"settings": {"extractor": "pixels"}, "fid": fid, "precision": 0.5, "recall": recall}
        (run / "eval" / "metrics.json").write_text(json.dumps(
            {"split": "test", "real_images": 100, "samples": 100, "sample_metrics": {"features": {"pixels": space}}}))
        return run

    runs = [fake_run("a0", "a", 0, 10.0, 0.5), fake_run("a1", "a", 1, 14.0, 0.5),  # FID 12 ± 2.8
            fake_run("b0", "b", 0, 13.0, 0.9), fake_run("b1", "b", 1, 15.0, 0.8),  # FID 14 ± 1.4: a tie with a
            fake_run("c0", "c", 0, 30.0, 0.1), fake_run("c1", "c", 1, 31.0, 0.1)]  # FID 30.5: worse
    md = (compare(runs, tmp_path / "cmp") / "report.md").read_text()
    verdict = md.split("## Verdict")[1].split("## All metrics")[0]
    fid_line = next(line for line in verdict.splitlines() if "| fid_pixels |" in line)
    assert "a0 and 1 more seed(s): 12 ± 2.828" in fid_line and "b0 and 1 more seed(s): 14 ± 1.414" in fid_line
    assert "tie within seed noise" in fid_line and "c0" not in fid_line
    recall_line = next(line for line in verdict.splitlines() if "| recall_pixels |" in line)
    assert "b0" in recall_line and "a0" not in recall_line and "tie" not in recall_line


def test_evaluation_never_draws_the_latents_the_best_epoch_was_chosen_on(tmp_path, monkeypatch):
    """Training seeds 0 and 1 choose their best epoch on prior draws; `evaluate` (seed 0, two chunks of 500) must
    draw other latents (before the seed streams, training seed s drew exactly evaluate's chunk s)."""
    from vaelab.models.base import GenerativeModel

    drawn: list[tuple[str, torch.Tensor]] = []
    phase = {"now": "train"}
    original = GenerativeModel.sample

    def recording_sample(self, n, y=None, generator=None):
        if generator is not None:  # the latents this call draws, from a copy of the generator's state
            copy = torch.Generator().set_state(generator.get_state())
            drawn.append((phase["now"], torch.randn(n, self.config.latent_dim, generator=copy)))
        return original(self, n, y=y, generator=generator)

    monkeypatch.setattr(GenerativeModel, "sample", recording_sample)
    for seed in (0, 1):
        train(load_config(overrides=tiny_overrides(**{"train.epochs": 1, "train.seed": seed,
                                                      "train.num_sample_images": 0})),
              tmp_path / f"s{seed}", progress=False)
    assert len(drawn) == 2  # one best-weights score per run
    phase["now"] = "evaluate"
    evaluate(tmp_path / "s1", num_samples=1000, features=["pixels"], k=0, progress=False, seed=0)
    scored = torch.cat([z for when, z in drawn if when == "train"])
    reported = torch.cat([z for when, z in drawn if when == "evaluate"])
    assert len(reported) == 1000
    shared = (torch.cdist(reported, scored) < 1e-6).any(1).sum()
    assert shared == 0, f"{int(shared)} evaluation latents were best-weights draws"


class _Planted:
    """An object whose unpickling runs a command: what a planted weights file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_at_the_inception_cache_path_never_runs(runs, tmp_path, monkeypatch):
    """`--features auto` picks up any file at torch's hub cache path for the FID Inception weights; a pickle that
    runs code on load is refused with a clear error, and its code never runs (features auto and inception alike)."""
    from vaelab.metrics.features import INCEPTION_FILE

    root, _ = runs
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    planted = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    planted.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Planted(marker)}, planted)
    for features in (["auto"], ["inception"]):
        with pytest.raises(VaelabError, match=f"{INCEPTION_FILE} is not a plain weights file.*refuses to load it"):
            evaluate(root / "gan", num_samples=20, features=features, progress=False)
        assert not marker.exists(), "the planted pickle ran its code"
    runner = CliRunner().invoke(app, ["evaluate", str(root / "gan"), "--num-samples", "20"])
    assert runner.exit_code == 2 and "refuses to load it" in runner.output and not marker.exists()


def test_inception_weights_load_as_tensors_and_wrong_tensors_are_a_clear_error(tmp_path, monkeypatch):
    """A state dict of the network's own shapes loads (the extractor's weights are the file's), and a file of
    tensors that are not Inception's is an error naming the file, not a torch traceback."""
    from torch import nn
    from torchmetrics.image.fid import NoTrainInceptionV3

    from vaelab.metrics.features import InceptionExtractor

    # the network's own tensors, random: build it once with its loader switched off
    monkeypatch.setattr(nn.Module, "load_state_dict", lambda self, state, *a, **k: None)
    monkeypatch.setattr(torch, "load", lambda *a, **k: {})
    state = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused").state_dict()
    monkeypatch.undo()
    weights = tmp_path / "inception.pth"
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, weights)
    extractor = InceptionExtractor(str(weights))
    loaded = extractor.net.state_dict()
    assert all(torch.equal(loaded[k].float(), state[k].float()) for k in state)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(VaelabError, match="wrong.pth holds tensors, but not the FID Inception"):
        InceptionExtractor(str(wrong))


def test_evaluate_on_the_validation_split_says_so_and_compare_does_not_rank_it_against_test(runs, tmp_path):
    import shutil

    root, _ = runs
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(root / "vae", a)
    shutil.copytree(root / "vae", b)
    val = evaluate(a, split="validation", num_samples=50, features=["pixels"], k=0, progress=False)
    assert val["split"] == "validation" and val["real_images"] == 500
    assert json.loads((a / "eval" / "metrics.json").read_text())["split"] == "validation"
    test = evaluate(b, split="test", num_samples=50, features=["pixels"], k=0, progress=False)
    # a setting chosen on the validation split's draws is reported on other latents: the two splits' samples differ
    assert val["seed_first_chunk"] != test["seed_first_chunk"]
    assert val["sample_metrics"]["sharpness_samples"] != test["sample_metrics"]["sharpness_samples"]
    md = (compare([a, b], tmp_path / "c") / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| fid_pixels |"))
    assert "split" in row and "**" not in row
    with pytest.raises(VaelabError, match="--split must be one of train, validation, test"):
        evaluate(a, split="valid", num_samples=50, features=["pixels"], progress=False)


def test_label_accuracy_counts_the_samples_the_classifier_calls_their_label(runs, monkeypatch):
    """A conditional model that draws a real test digit of the class asked for: its label accuracy is the classifier's
    accuracy on those digits (high), and it would be ~0.1 if the labels were matched to the wrong samples."""
    from vaelab.models.cvae import CVAE

    root, _ = runs
    test = load_data(DataConfig()).test
    x = first_images(test, 1000)
    first_of_class = torch.stack([x[test.labels == c][0] for c in range(10)])  # (10, 1, 28, 28)
    monkeypatch.setattr(CVAE, "decode", lambda self, z, y=None: first_of_class[y.cpu()].to(z.device))
    result = evaluate(root / "cvae", num_samples=200, features=[f"classifier:{root / 'clf'}"], k=0, utility=False,
                      progress=False)
    _, logits = ClassifierExtractor(root / "clf").embed(first_of_class)
    expected = float((logits.argmax(1) == torch.arange(10)).double().mean())  # every class 20 times
    accuracy = result["sample_metrics"]["features"][f"classifier:{root / 'clf'}"]["conditional_accuracy"]
    assert expected >= 0.7 and accuracy == pytest.approx(expected)
