"""Small folders (issue 34): presets scaled to the data's size, the best-weights choice that fresh draws must confirm,
the score through the sampler the user gets, and a domain classifier that trains on a handful of images."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_overrides
from vaelab.cli import app
from vaelab.config import TrainConfig, load_config
from vaelab.data import load_data
from vaelab.metrics import features as feats
from vaelab.metrics.quality import SampleQuality
from vaelab.run import RunFolder, load
from vaelab.samplers import proxy_mixture
from vaelab.training import train
from vaelab.models.vaegan import VAEGANConfig
from vaelab.training.data_size import resolve_augmentation, scale_to_data_size
from vaelab.training.end_of_run import best_confirmation


def test_a_smaller_split_scales_every_epoch_counted_setting_once():
    t = TrainConfig(epochs=30, reference_train_images=3500, lr_schedule_epochs=150, sample_every_epochs=1,
                    best_every_epochs=1, checkpoint_every_epochs=2, batch_size=64)
    scaling = scale_to_data_size(t, 350)
    # in whole batches: 3,500 images make 54 steps an epoch, 350 make 5 (the ragged last batch is dropped), so 30
    # epochs' 1,620 steps are 324 epochs of 350 images (an image ratio would give 300: 1,500 steps)
    assert (t.epochs, t.lr_schedule_epochs, t.best_every_epochs, t.sample_every_epochs,
            t.checkpoint_every_epochs) == (324, 1620, 11, 11, 22)
    assert t.epochs * (350 // 64) == 30 * (3500 // 64)
    assert scaling["factor"] == 10.8 and scaling["from"]["epochs"] == 30 and t.size_scaling is scaling
    assert t.reference_train_images is None and scale_to_data_size(t, 350) is None  # a resume does not scale again
    big = TrainConfig(epochs=30, reference_train_images=3500, sample_every_epochs=0)
    assert scale_to_data_size(big, 60000) is None and big.epochs == 30  # more data keeps the epochs (more steps)
    small = TrainConfig(epochs=30, reference_train_images=3500, sample_every_epochs=0)
    scale_to_data_size(small, 700)
    assert small.sample_every_epochs == 0  # off stays off


def test_augmentation_below_a_size_is_decided_once_from_the_training_split():
    small = VAEGANConfig(augment="translation", augment_below_images=1000)
    decision = resolve_augmentation(small, 350)
    assert decision["applied"] and small.augment == "translation" and small.augment_below_images is None
    assert resolve_augmentation(small, 350) is None  # decided: a resume or a reload builds the same model
    large = VAEGANConfig(augment="translation", augment_below_images=1000)
    assert not resolve_augmentation(large, 3500)["applied"] and large.augment == ""
    assert resolve_augmentation(VAEGANConfig(augment="translation"), 3500) is None  # no rule: as set


def _digit_folder(root, per_class: int):
    """sklearn's 8x8 digits as a folder with a subfolder per class (per_class images each)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i, j in enumerate((digits.target == c).nonzero()[0][:per_class]):
            Image.fromarray((digits.images[j] * 255 / 16).astype("uint8")).resize((16, 16)).save(root / str(c) / f"{i}.png")
    return root


def test_a_preset_on_a_small_folder_makes_its_steps_and_says_so_and_epochs_given_are_kept(tmp_path):
    data = _digit_folder(tmp_path / "data", 10)  # 100 images: 80 train, of which 70 after the validation share
    tiny = [s for s in tiny_overrides(vae=True, **{"train.batch_size": 16}) for s in ("--set", s)]
    result = CliRunner().invoke(app, ["train", "--preset", "vae-mnist", "--data", f"folder:{data}", "--out",
                                      str(tmp_path / "scaled"), "--max-steps", "8", "--no-progress", *tiny])
    assert result.exit_code == 0, result.output
    cfg = RunFolder(tmp_path / "scaled").read_config()
    scaling = cfg.train.size_scaling
    assert scaling["reference_train_images"] == 3500 and scaling["train_images"] == 70
    # 30 epochs of 3,500 // 16 = 218 steps are 1,635 epochs of 70 // 16 = 4
    assert cfg.train.epochs == 1635 and scaling["from"]["epochs"] == 30
    assert cfg.train.reference_train_images is None
    logged = [r for r in RunFolder(tmp_path / "scaled").read_metrics() if r["event"] == "size_scaling"]
    assert "epochs 30 -> 1635" in logged[0]["message"]
    result = CliRunner().invoke(app, ["train", "--preset", "vae-mnist", "--data", f"folder:{data}", "--out",
                                      str(tmp_path / "given"), "--epochs", "2", "--no-progress", *tiny])
    assert result.exit_code == 0, result.output
    cfg = RunFolder(tmp_path / "given").read_config()
    assert cfg.train.epochs == 2 and cfg.train.size_scaling is None and cfg.train.reference_train_images is None


def test_a_small_folder_trains_the_vaegan_preset_with_its_discriminator_augmented(tmp_path):
    data = _digit_folder(tmp_path / "data", 10)
    sets = {"model.widths": "[8, 16]", "model.discriminator_widths": "[8, 16]", "model.latent_dim": "4",
            "train.batch_size": 16, "train.track_best": "false"}
    tiny = [s for s in tiny_overrides(vae=False, **sets) for s in ("--set", s)]
    result = CliRunner().invoke(app, ["train", "--preset", "vaegan-mnist", "--data", f"folder:{data}", "--out",
                                      str(tmp_path / "run"), "--max-steps", "4", "--no-progress", *tiny])
    assert result.exit_code == 0, result.output
    cfg = RunFolder(tmp_path / "run").read_config()
    assert cfg.model.augment == "translation" and cfg.model.augment_below_images is None  # the preset's rule, decided
    logged = [r for r in RunFolder(tmp_path / "run").read_metrics() if r["event"] == "augmentation"]
    assert logged[0]["applied"] and "70 training images" in logged[0]["message"]


def test_best_confirmation_needs_a_gain_beyond_the_draws_noise():
    assert best_confirmation([10.0, 11.0, 9.0], [20.0, 21.0, 19.0])["confirmed"]
    assert not best_confirmation([10.0, 11.0, 9.0], [10.5, 10.0, 10.0])["confirmed"]  # gain 0.17, error 0.6
    assert not best_confirmation([10.0, 10.0, 10.0], [9.0, 9.0, 9.0])["confirmed"]  # the last weights are better


def test_a_lucky_score_does_not_keep_worse_weights(tmp_path, monkeypatch):
    """Epoch 1 scores 0 on its one draw (the winner's curse of a noisy score, made certain); the fresh draws see
    through it, the run keeps its last weights and says so."""
    real_score = SampleQuality.score
    calls = []

    def lucky_first(self, model, draw=0):
        calls.append(draw)
        return 0.0 if len(calls) == 1 else real_score(self, model, draw)

    monkeypatch.setattr(SampleQuality, "score", lucky_first)
    run = tmp_path / "r"
    summary = train(load_config(overrides=tiny_overrides(**{"train.epochs": 3})), run, progress=False)
    assert summary["best_weights"]["kept"] == "last" and summary["best_weights"]["epoch_scored_best"] == 1
    assert summary["best_weights"]["draws"] == 3 and calls.count(0) == 3 and sorted(set(calls)) == [0, 1, 2, 3]
    assert not (run / "model-best.safetensors").exists() and not (run / "model-best.json").exists()
    last = load_file(run / "model.safetensors")
    assert all(torch.equal(load(run).state_dict()[k], last[k]) for k in last)
    events = [r for r in RunFolder(run).read_metrics() if r["event"] == "best_weights"]
    assert "kept the last weights" in events[0]["message"]


def test_best_weights_that_fresh_draws_confirm_are_kept(tmp_path, monkeypatch):
    """Epoch 1's weights score better than the last ones on every draw (made certain): the fresh draws confirm them,
    the run keeps model-best.* and vaelab.load reads them, with the confirmation and its reference recorded."""
    trained = []

    def epoch_one_is_better(self, model, draw=0):
        if draw == 0:  # the per-epoch scores: epoch 1 scores 1, the later epochs 5
            trained.append(model)
            return 1.0 if len(trained) == 1 else 5.0
        return 1.0 + 0.1 * draw if model is not trained[0] else 5.0 + 0.3 * draw  # the kept weights are a new model

    monkeypatch.setattr(SampleQuality, "score", epoch_one_is_better)
    run = tmp_path / "r"
    summary = train(load_config(overrides=tiny_overrides(**{"train.epochs": 3})), run, progress=False)
    kept = summary["best_weights"]
    assert kept["kept"] == "best" and kept["epoch"] == 1 and kept["confirmed"] and kept["draws"] == 3
    assert "chosen on" in kept["reference"]  # mnist5k's 500 validation images: none left to confirm on
    assert json.loads((run / "model-best.json").read_text())["confirmation"]["confirmed"]
    best = load_file(run / "model-best.safetensors")
    assert load(run).weights_file == "model-best.safetensors"
    assert any(not torch.equal(best[k], load_file(run / "model.safetensors")[k]) for k in best)


def test_the_score_draws_through_a_mixture_on_the_current_codes(tmp_path):
    run = tmp_path / "r"
    cfg = load_config(overrides=tiny_overrides(**{"train.epochs": 1}))
    train(cfg, run, progress=False)
    model, data = load(run), load_data(cfg.data)
    prior = SampleQuality(data, cfg.data, n=200).score(model)
    proxy_quality = SampleQuality(data, cfg.data, n=200, sampler_proxy=proxy_mixture(data))
    proxied = proxy_quality.score(model)
    assert model.latent_sampler is None  # put back
    assert proxied < prior  # the codes' mixture beats the prior's holes, even after one epoch
    assert "gmm proxy" in proxy_quality.settings["sampler"]
    mixture = proxy_mixture(data)(model)
    model.latent_sampler = mixture  # a model that carries a sampler is scored with it, not a proxy
    assert proxy_quality.score(model) == pytest.approx(SampleQuality(data, cfg.data, n=200).score(model))
    assert model.latent_sampler is mixture


def test_the_domain_classifier_trains_on_a_handful_of_images(tmp_path):
    torch.manual_seed(0)
    x = torch.zeros(60, 1, 16, 16)
    y = torch.arange(60) % 2
    x[y == 0, :, :8] = 1.0  # top half lit / bottom half lit
    x[y == 1, :, 8:] = 1.0
    x += 0.1 * torch.rand_like(x)
    model, info = feats.train_classifier(x, y, 2)  # 60 images < one batch of 128: formerly no step at all
    assert info["steps"] >= feats.MIN_CLASSIFIER_STEPS
    assert feats.accuracy(model, x, y) == 1.0


def test_a_cached_classifier_of_another_folder_state_is_trained_again(tmp_path, monkeypatch):
    data = _digit_folder(tmp_path / "data", 6)
    cfg = load_config(overrides=[f"data.name=folder:{data}"]).data
    folder = feats.cached_classifier(load_data(cfg), cfg)
    first = json.loads((folder / "classifier.json").read_text())
    for c in range(10):  # the user adds images
        for i in range(6, 9):
            (data / str(c) / f"{i}.png").write_bytes((data / str(c) / "0.png").read_bytes())
    again = json.loads((feats.cached_classifier(load_data(cfg), cfg) / "classifier.json").read_text())
    assert again["train_images"] > first["train_images"]


def _shapes_folder(root, count: int = 250, size: int = 64):
    """``count`` 64 px RGB photo-like images, unlabelled (a disc or a square of a random colour, place and size on a
    shaded background), in one folder, as most users' photos come."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(34)
    root.mkdir(parents=True)
    for i in range(count):
        base = rng.integers(0, 255, 3)
        ramp = np.linspace(0.6, 1.0, size)[:, None, None]
        image = Image.fromarray((ramp * base[None, None, :] * np.ones((size, size, 3))).astype("uint8"))
        r = int(rng.integers(8, 20))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if i % 2 else draw.rectangle)([cx - r, cy - r, cx + r, cy + r], fill=colour)
        image.save(root / f"{i:04d}.png")
    return root


def test_a_250_image_64px_rgb_folder_trains_samples_and_evaluates_with_its_size_aware_settings(tmp_path):
    """The user's first command on their own small folder of photos, end to end: the default preset scaled to the
    folder's size (and saying so), the best weights scored in random features (no labels), the mixture sized to the
    codes, then sample and evaluate. CI-sized: --max-steps bounds the training (the scaled run would make the
    preset's ~1,640 steps)."""
    data = _shapes_folder(tmp_path / "photos")
    run, out = tmp_path / "run", tmp_path / "out"
    cli = CliRunner()
    result = cli.invoke(app, ["train", "--data", f"folder:{data}", "--out", str(run), "--max-steps", "30",
                              "--set", "train.trackers=[]", "--set", "train.best_samples=200", "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = RunFolder(run).read_config()
    assert (cfg.model.image_size, cfg.model.channels) == (64, 3)
    scaling = cfg.train.size_scaling  # 250 files: 200 train, 175 after the validation share
    batch = cfg.train.batch_size  # the preset's optimizer steps, counted in whole batches (an epoch drops the last)
    assert scaling["train_images"] == 175 and cfg.train.epochs * (175 // batch) == 30 * (3500 // batch)
    assert "175 training images" in [r for r in RunFolder(run).read_metrics() if r["event"] == "size_scaling"][0]["message"]
    best = json.loads((run / "model-best.json").read_text())
    assert best["feature_space"] == "random_features" and best["reference_images"] == 25
    # a tenth of the 175 codes at most: 17 components whatever was asked, and the candidates that come out the same
    # mixture are fitted and scored once
    mixture = json.loads((run / "sampler-gmm.json").read_text())["settings"]
    rows = mixture["selection"]
    assert [row["components"] for row in rows[:4]] == [10, 10, 20, 20]
    if len(rows) > 4:  # none of the four drew as far from the training images as the validation images: wider
        assert all(min(row["memorisation_ratio_pixels"], row["memorisation_ratio"]) < 0.9 for row in rows[:4])
        assert [(row["components"], row["spread"]) for row in rows[4:]] == [(10, 1.5), (10, 2.0)]
    from vaelab import load as load_model

    assert load_model(run).latent_sampler.means.shape[0] <= 17
    result = cli.invoke(app, ["sample", str(run), "-n", "16", "-o", str(out / "samples.png")])
    assert result.exit_code == 0 and (out / "samples.png").is_file(), result.output
    result = cli.invoke(app, ["evaluate", str(run), "--k", "0", "--no-utility", "--num-samples", "200"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["sampler"]["kind"] == "gmm" and metrics["real_images"] == 50
    for space in metrics["sample_metrics"]["features"].values():
        assert space["fid"] > 0 and 0 <= space["coverage"] <= 1
