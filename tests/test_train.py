import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_overrides
from vaelab import load
from vaelab.cli import app
from vaelab.config import load_config
from vaelab.errors import ConfigError, TrainingDiverged
from vaelab.run import RunFolder
from vaelab.config import parse_duration
from vaelab.training import train


def tiny_config(**extra):
    return load_config(overrides=tiny_overrides(**{"model.dropout": 0.1, **extra}))


def weights(path):
    return load_file(path / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_gives_the_same_weights(tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(**{"train.epochs": 2}), straight, progress=False)

    split = tmp_path / "split"
    train(tiny_config(**{"train.epochs": 1}), split, progress=False)
    train(RunFolder(split).read_config().__class__ and tiny_config(**{"train.epochs": 2}), split, resume=True, progress=False)
    assert_same_weights(weights(straight), weights(split))

    # stopped in the middle of an epoch, from a step checkpoint
    mid = tmp_path / "mid"
    train(tiny_config(**{"train.epochs": 2, "train.checkpoint_every_steps": 7, "train.max_steps": 17}), mid, progress=False)
    assert RunFolder(mid).load_checkpoint()["batch"] == 17
    train(tiny_config(**{"train.epochs": 2, "train.checkpoint_every_steps": 7}), mid, resume=True, progress=False)
    assert_same_weights(weights(straight), weights(mid))

    # and the per-epoch test ELBO logged by the resumed run matches the straight run's
    ends = [r for r in RunFolder(straight).read_metrics() if r["event"] == "epoch"]
    ends_split = [r for r in RunFolder(split).read_metrics() if r["event"] == "epoch"]
    assert ends[-1]["monitor_elbo"] == pytest.approx(ends_split[-1]["monitor_elbo"], rel=1e-6)


def test_checkpoints_are_pruned_and_round_trip(tmp_path):
    cfg = tiny_config(**{"train.epochs": 1, "train.checkpoint_every_steps": 5, "train.keep_checkpoints": 2})
    train(cfg, tmp_path / "r", progress=False)
    run = RunFolder(tmp_path / "r")
    names = [p.name for p in run.checkpoints()]
    assert names == ["step-00000030.pt", "step-00000035.pt"]  # 3,500 training images in batches of 100
    assert not [p for p in run.checkpoint_dir.iterdir() if p.name.endswith(".tmp")]
    state = run.load_checkpoint()
    model = load(tmp_path / "r")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    assert state["step"] == 35 and set(state["optimizers"]) == {"vae"}


def inject_nan_kl(monkeypatch, at_calls: set[int]) -> None:
    """Make the VAE's KL term NaN on the given (1-based) calls, i.e. on those training steps."""
    import vaelab.models.vae as vae_module

    real_kl = vae_module.kl_standard_normal
    calls = {"n": 0}

    def kl_that_breaks(mu, logvar):
        calls["n"] += 1
        out = real_kl(mu, logvar)
        return out * float("nan") if calls["n"] in at_calls else out

    monkeypatch.setattr(vae_module, "kl_standard_normal", kl_that_breaks)


def test_nan_stops_with_the_term_and_step_and_keeps_good_checkpoints(tmp_path, monkeypatch):
    inject_nan_kl(monkeypatch, {6})
    cfg = tiny_config(**{"train.epochs": 1, "train.checkpoint_every_steps": 2})
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, tmp_path / "r", progress=False)
    message = str(err.value)
    assert "'kl'" in message and "step 6" in message and "step-00000004.pt" in message
    state = RunFolder(tmp_path / "r").load_checkpoint()
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_time_budget_and_durations(tmp_path):
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("2h30m") == 9000
    assert parse_duration("1.5h") == 5400 and parse_duration("12") == 12
    from vaelab.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read the duration"):
        parse_duration("ten minutes")
    summary = train(tiny_config(**{"train.epochs": 100, "train.time_budget": "1s"}), tmp_path / "r", progress=False)
    assert summary["stopped_by"] == "time_budget" and summary["epochs_done"] < 100
    assert (tmp_path / "r" / "model.safetensors").is_file()


def test_bf16_trains_on_cpu(tmp_path):
    summary = train(tiny_config(**{"train.epochs": 1, "train.precision": "bf16"}), tmp_path / "r", progress=False)
    assert math.isfinite(summary["likelihood"]["elbo_nats"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vaelab", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_end_to_end_train_sample_reconstruct(tmp_path):
    run = tmp_path / "run"
    # the default preset (vae-mnist), shortened to 3 epochs
    result = _cli("train", "--epochs", "3", "--out", str(run), "--no-progress", "--set", "train.trackers=[]")
    assert result.returncode == 0, result.stderr
    assert "test ELBO" in result.stdout
    rows = RunFolder(run).read_metrics()
    steps = [r for r in rows if r["event"] == "step"]
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"], (steps[0], steps[-1])
    epochs = [r for r in rows if r["event"] == "epoch"]
    assert epochs[-1]["monitor_elbo"] > epochs[0]["monitor_elbo"]
    for name in ("config.yaml", "model.safetensors", "summary.json", "samples/epoch-0003-samples.png",
                 "samples/epoch-0003-reconstructions.png"):
        assert (run / name).is_file(), name

    runner = CliRunner()
    out = runner.invoke(app, ["sample", str(run), "--num", "10", "--out", str(tmp_path / "s.npz"), "--seed", "3"])
    assert out.exit_code == 0, out.output
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (10, 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05
    again = runner.invoke(app, ["sample", str(run), "--num", "10", "--out", str(tmp_path / "t.npz"), "--seed", "3"])
    assert again.exit_code == 0 and np.array_equal(images, np.load(tmp_path / "t.npz")["images"])

    out = runner.invoke(app, ["sample", str(run), "--num", "64", "--out", str(tmp_path / "grid.png")])
    assert out.exit_code == 0 and (tmp_path / "grid.png").stat().st_size > 1000
    out = runner.invoke(app, ["reconstruct", str(run), "--num", "16", "--out", str(tmp_path / "recon.png")])
    assert out.exit_code == 0, out.output
    mse = float(out.output.split("MSE ")[1].rstrip(")\n"))
    from vaelab.config import DataConfig
    from vaelab.data import first_images, load_data

    x = first_images(load_data(DataConfig()).test, 16)
    mean_image_mse = float((x - x.mean(0, keepdim=True)).pow(2).mean())
    assert mse < 0.5 * mean_image_mse, (mse, mean_image_mse)
    from PIL import Image

    with Image.open(tmp_path / "recon.png") as grid:  # 4 rows (2 originals, 2 reconstructions) of 8, padding 1
        assert grid.size == (8 * 29 + 1, 4 * 29 + 1)


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    runner = CliRunner()
    cases = [
        (["train", "--preset", "nope"], "no preset named 'nope'"),
        (["train", "--set", "model.latnet=3"], "unknown key(s) in 'model': latnet"),
        (["train", "--data", f"folder:{tmp_path / 'missing'}"], "image folder not found"),
        (["train", "--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
        (["sample", str(tmp_path / "norun")], "run folder not found"),
        (["train", "--resume", str(tmp_path / "norun")], "run folder not found"),
    ]
    for args, fragment in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert fragment in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_presets_and_datasets_are_listed():
    runner = CliRunner()
    out = runner.invoke(app, ["presets"])
    assert out.exit_code == 0 and "vae-wss18-mnist" in out.output and "vae-mnist " in out.output
    out = runner.invoke(app, ["datasets"])
    assert out.exit_code == 0 and "mnist5k" in out.output and "folder:PATH" in out.output


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    sets = [a for s in tiny_overrides(**{"train.checkpoint_every_epochs": 0}) for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "train", "--epochs", "50", "--out", str(run), "--no-progress", *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.jsonl").is_file() and "epoch" in (run / "metrics.jsonl").read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stdout and "--resume" in stdout
    assert "Traceback" not in stderr
    state = RunFolder(run).load_checkpoint()
    assert 0 < state["step"] < 50 * 35
    result = _cli("train", "--resume", str(run), "--epochs", str(state["epoch"] + 1), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == state["epoch"] + 1 and summary["steps"] == (state["epoch"] + 1) * 35


def test_on_nan_rollback_restores_lowers_the_lr_and_finishes(tmp_path, monkeypatch):
    inject_nan_kl(monkeypatch, {6, 9})  # twice: two rollbacks
    cfg = tiny_config(**{"train.epochs": 1, "train.checkpoint_every_steps": 2, "train.on_nan": "rollback"})
    with pytest.warns(UserWarning, match="rolled back to step 4"):
        summary = train(cfg, tmp_path / "r", progress=False)
    assert summary["stopped_by"] == "epochs" and summary["steps"] == 35
    rows = RunFolder(tmp_path / "r").read_metrics()
    rollbacks = [r for r in rows if r["event"] == "rollback"]
    # kl call 6 is step 6 (back to the step-4 checkpoint); call 9 is step 7 (steps 5, 6 redone; back to step 6)
    assert [r["failed_at_step"] for r in rollbacks] == [6, 7] and [r["step"] for r in rollbacks] == [4, 6]
    assert rollbacks[-1]["lr_vae"] == pytest.approx(1e-3 * 0.25)  # compounded: two halvings
    state = RunFolder(tmp_path / "r").load_checkpoint()
    assert state["optimizers"]["vae"]["param_groups"][0]["lr"] == pytest.approx(2.5e-4)

    inject_nan_kl(monkeypatch, {6})  # the limit: with max_rollbacks=0 the run stops as before
    cfg = tiny_config(**{"train.epochs": 1, "train.checkpoint_every_steps": 2, "train.on_nan": "rollback",
                         "train.max_rollbacks": 0})
    with pytest.raises(TrainingDiverged, match="--on-nan rollback"):
        train(cfg, tmp_path / "s", progress=False)


def test_lr_schedules_by_hand():
    from vaelab.training.lr_schedule import lr_factor

    assert lr_factor("constant", 3, 4, 0.1, 0.75) == 1.0
    assert lr_factor("gamma", 0, 4, 5e-4, 0.75) == 1.0
    assert lr_factor("gamma", 2, 4, 5e-4, 0.75) == pytest.approx(1 - 0.5**0.75 * (1 - 5e-4))  # 0.4057
    assert lr_factor("gamma", 4, 4, 5e-4, 0.75) == pytest.approx(5e-4)
    assert lr_factor("cosine", 2, 4, 0.1, 0.75) == pytest.approx(0.55)
    assert lr_factor("cosine", 4, 4, 0.1, 0.75) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="lr_final_factor"):
        tiny_config(**{"train.lr_final_factor": 2})
    with pytest.raises(ConfigError, match="lr_schedule_epochs"):
        tiny_config(**{"train.lr_schedule_epochs": 0})


def test_lr_schedule_sets_each_epoch_resumes_exactly_and_keeps_a_rollbacks_cut(tmp_path, monkeypatch):
    from vaelab.training.lr_schedule import lr_factor

    sets = {"train.epochs": 3, "train.lr_schedule": "gamma", "train.lr_final_factor": 0.1}
    train(tiny_config(**sets), tmp_path / "straight", progress=False)
    ends = [r for r in RunFolder(tmp_path / "straight").read_metrics() if r["event"] == "epoch"]
    assert [r["lr_vae"] for r in ends] == pytest.approx([1e-3 * lr_factor("gamma", e, 3, 0.1, 0.75) for e in range(3)])
    assert ends[2]["lr_vae"] < ends[1]["lr_vae"] < ends[0]["lr_vae"] == pytest.approx(1e-3)

    train(tiny_config(**{**sets, "train.epochs": 1}), tmp_path / "split", progress=False)
    train(tiny_config(**sets), tmp_path / "split", resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "split"))

    train(tiny_config(**sets, **{"train.lr_schedule_epochs": 2}), tmp_path / "short", progress=False)
    ends = [r for r in RunFolder(tmp_path / "short").read_metrics() if r["event"] == "epoch"]
    assert [r["lr_vae"] for r in ends] == pytest.approx([1e-3, 1e-3 * lr_factor("gamma", 1, 2, 0.1, 0.75), 1e-4])

    inject_nan_kl(monkeypatch, {6})  # a rollback in epoch 1 halves the base rate the schedule scales later
    with pytest.warns(UserWarning, match="rolled back"):
        train(tiny_config(**sets, **{"train.checkpoint_every_steps": 2, "train.on_nan": "rollback"}),
              tmp_path / "r", progress=False)
    ends = [r for r in RunFolder(tmp_path / "r").read_metrics() if r["event"] == "epoch"]
    assert ends[2]["lr_vae"] == pytest.approx(0.5e-3 * lr_factor("gamma", 2, 3, 0.1, 0.75))


def test_auto_precision_is_bf16_only_for_models_measured_in_it_on_native_hardware(monkeypatch):
    import vaelab.accel as accel

    cpu = torch.device("cpu")
    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: True)
    assert accel.resolve_precision("auto", cpu, "vae") == "bf16"
    assert accel.resolve_precision("auto", cpu, "cvae") == "bf16"
    assert accel.resolve_precision("auto", cpu, "vaegan") == "bf16"  # FID measured equal over 3 seeds
    assert accel.resolve_precision("auto", cpu, "dcgan") == "fp32"  # not measured in bf16: fp32
    assert accel.resolve_precision("auto", cpu, "avae") == "bf16"  # the 300-epoch preset: FID equal over 3 seeds
    assert accel.resolve_precision("auto", cpu, "began_star") == "fp32"  # not measured in bf16
    assert accel.resolve_precision("fp32", cpu, "vae") == "fp32"
    assert accel.resolve_precision("bf16", cpu, "dcgan") == "bf16"
    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: False)
    assert accel.resolve_precision("auto", cpu, "vae") == "fp32"


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_summary_records_the_precision_auto_chose(tmp_path, monkeypatch, native_bf16, expected):
    import vaelab.accel as accel

    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: native_bf16)
    summary = train(tiny_config(**{"train.max_steps": 2, "train.device": "cpu"}), tmp_path / "r", progress=False)
    assert summary["precision"] == expected


def test_fused_step_keeps_the_optimizer_and_its_settings():
    from vaelab.accel import with_fused_step

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = torch.optim.Adam(params, lr=2e-3, betas=(0.5, 0.9), weight_decay=0.1)
    fused = with_fused_step(torch.optim.Adam(twins, lr=2e-3, betas=(0.5, 0.9), weight_decay=0.1))
    group = fused.param_groups[0]
    assert group["fused"] and (group["lr"], group["betas"], group["weight_decay"]) == (2e-3, (0.5, 0.9), 0.1)
    assert group["params"] == twins
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, t, g in zip(params, twins, grads):
            p.grad, t.grad = g.clone(), g.clone()
        plain.step()
        fused.step()
    for p, t in zip(params, twins):
        torch.testing.assert_close(p, t)
    rmsprop = torch.optim.RMSprop(params, lr=1e-3)  # no fused kernel: returned as it is
    assert with_fused_step(rmsprop) is rmsprop


def test_fused_adam_gets_gradients_in_its_parameters_layout():
    """autograd.grad hands back gradients in whatever layout the ops made (here transposed); torch's fused CPU Adam
    pairs elements by memory offset, so the updater must give each gradient its parameter's strides first."""
    from vaelab.accel import with_fused_step
    from vaelab.training import UpdateContext

    torch.manual_seed(0)
    start, target = torch.randn(4, 6), torch.randn(6, 4)
    results = {}
    for fused in (False, True):
        weight = torch.nn.Parameter(start.clone())
        opt = torch.optim.Adam([weight], lr=0.1)
        updater = UpdateContext({"w": with_fused_step(opt) if fused else opt}, {}, 1, None, "cpu")
        for _ in range(3):
            # d loss / d weight comes back as the transpose of a contiguous (6, 4) tensor: strides (1, 4), not (6, 1)
            loss = (weight.t().contiguous() * target).pow(2).sum()
            assert torch.autograd.grad(loss, [weight], retain_graph=True)[0].stride() != weight.stride()
            updater.update(loss, "w")
        results[fused] = weight.detach()
    assert not torch.equal(results[True], start)
    torch.testing.assert_close(results[True], results[False])


def test_fused_optimizer_trains_a_gradient_penalty_model_exactly_as_the_unfused_one(tmp_path):
    """wgan-gp's double backward returns conv weight gradients with permuted strides (the case above, in a preset)."""
    from vaelab.training import Trainer

    params = {}
    for fused in ("true", "false"):
        cfg = load_config(preset="wgan-gp-mnist", overrides=[
            "train.max_steps=4", "train.batch_size=8", "train.precision=fp32", "train.device=cpu",
            "train.trackers=[]", f"train.fused_optimizer={fused}", "train.sample_every_epochs=0"])
        trainer = Trainer(cfg, tmp_path / fused, progress=False)
        trainer.fit()
        params[fused] = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    for key, value in params["true"].items():
        torch.testing.assert_close(value, params["false"][key], msg=key)


def test_channels_last_trains_the_same_model_and_saves_plain_weights(tmp_path):
    from vaelab.training import Trainer

    runs = {}
    for layout in ("true", "false"):
        cfg = tiny_config(**{"train.max_steps": 4, "train.precision": "fp32", "train.device": "cpu",
                             "train.channels_last": layout, "model.dropout": 0.0})
        trainer = Trainer(cfg, tmp_path / layout, progress=False)
        conv = trainer.model.encoder.net[2].weight  # 8 -> 16 channels (a 1-channel weight is both layouts)
        assert conv.is_contiguous(memory_format=torch.channels_last) == (layout == "true")
        assert conv.is_contiguous() == (layout == "false")
        assert all(o.param_groups[0]["fused"] for o in trainer.optimizers.values())
        runs[layout] = trainer.fit()
        weights(tmp_path / layout)  # safetensors refuses strided tensors: saving must have made them plain
    assert runs["true"]["likelihood"]["elbo_nats"] == pytest.approx(runs["false"]["likelihood"]["elbo_nats"], rel=1e-4)
    for key, value in weights(tmp_path / "true").items():
        torch.testing.assert_close(value, weights(tmp_path / "false")[key], rtol=1e-3, atol=2e-4)  # 4 Adam steps of lr 1e-3 move weights ~4e-3


def test_the_best_epoch_is_kept_and_loaded_by_default(tmp_path):
    run = tmp_path / "r"
    # the per-epoch choice alone (the fresh draws' confirmation at the end: test_small_folders.py)
    train(tiny_config(**{"train.epochs": 3, "train.confirm_best": False}), run, progress=False)
    epochs = [r for r in RunFolder(run).read_metrics() if r["event"] == "epoch"]
    scores = [r["sample_fid"] for r in epochs]
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    info = json.loads((run / "model-best.json").read_text())
    best_epoch = 1 + scores.index(min(scores))
    assert info["epoch"] == best_epoch and info["sample_fid"] == pytest.approx(min(scores))
    assert info["feature_space"] == "classifier"  # mnist5k has labels
    assert [r["best"] for r in epochs] == [s == min(scores[: i + 1]) for i, s in enumerate(scores)]
    best, last = load_file(run / "model-best.safetensors"), weights(run)
    default, final = load(run).state_dict(), load(run, weights="last").state_dict()
    assert all(torch.equal(default[k], best[k]) for k in best)
    assert all(torch.equal(final[k], last[k]) for k in last)
    sparse = tmp_path / "every2"  # train.best_every_epochs: every n-th epoch and the last are scored
    train(tiny_config(**{"train.epochs": 3, "train.best_every_epochs": 2}), sparse, progress=False)
    assert ["sample_fid" in r for r in RunFolder(sparse).read_metrics() if r["event"] == "epoch"] == [False, True, True]
    # the score is the FID of the kept weights' samples: rescoring them gives the same number
    from vaelab.data import load_data
    from vaelab.metrics.quality import SampleQuality

    cfg = RunFolder(run).read_config()
    assert SampleQuality(load_data(cfg.data), cfg.data).score(load(run)) == pytest.approx(min(scores), rel=1e-6)


def test_a_failing_grid_writer_never_loses_the_epoch(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "samples").write_text("a file where the grids' folder should be")  # every grid write fails
    with pytest.warns(UserWarning, match="sample grids failed at epoch 1"):
        summary = train(tiny_config(**{"train.epochs": 2}), run, progress=False)
    assert summary["epochs_done"] == 2 and (run / "model.safetensors").is_file()
    assert RunFolder(run).checkpoints()  # written before the grids were tried
    warned = [r for r in RunFolder(run).read_metrics() if r["event"] == "warning"]
    assert len(warned) == 2 and "FileExistsError" in warned[0]["message"]


def test_grids_of_a_test_split_that_is_not_a_multiple_of_eight(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(110):  # every 5th file is a test image (22); 1 in 8 of the other 88 a validation image: 11
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    cfg = load_config(overrides=tiny_overrides(**{"train.batch_size": 16, "train.epochs": 1,
                                                  "train.num_sample_images": 8}) + [f"data.name=folder:{folder}"])
    train(cfg, tmp_path / "r", progress=False)
    with Image.open(tmp_path / "r" / "samples" / "epoch-0001-reconstructions.png") as grid:
        size = grid.size
    # the validation split's 11 originals and reconstructions: two pairs of rows of 8
    assert size == (8 * 17 + 1, 4 * 17 + 1)


def test_the_best_epoch_score_compares_with_every_class_and_draws_its_labels():
    """mnist5k's splits are sorted by class: the reference images of the best-epoch score are spread over the split
    (50 per class of 500), not its first 500 (400 zeros, 100 ones), and a conditional model draws their labels."""
    from vaelab.config import load_config
    from vaelab.data import load_data, spaced_indices
    from vaelab.metrics.quality import SampleQuality

    assert spaced_indices(10, 4).tolist() == [0, 2, 5, 7] and spaced_indices(3, 8).tolist() == [0, 1, 2]
    cfg = load_config("cvae-mnist")
    data = load_data(cfg.data)
    quality = SampleQuality(data, cfg.data, n=500)
    assert quality.labels.bincount(minlength=10).tolist() == [50] * 10

    class Recorder(torch.nn.Module):
        is_conditional = True
        device = torch.device("cpu")

        def sample(self, n, y=None, generator=None):
            self.drawn = y
            return torch.rand(n, 1, 28, 28, generator=generator)

    model = Recorder()
    quality.score(model)
    assert torch.equal(model.drawn, quality.labels)


def test_the_best_epoch_score_in_bf16_ranks_as_in_fp32():
    """The bf16 feature network (the default on CPUs with native bf16) gives the fp32 score within 1% and the same
    order: test digits beat blurred digits beat noise."""
    import torch.nn.functional as F

    from vaelab.data import first_images, load_data
    from vaelab.metrics.quality import SampleQuality

    cfg = load_config("vae-mnist")
    data = load_data(cfg.data)
    digits = first_images(data.test, 1000)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:500]]

    class Fixed(torch.nn.Module):
        is_conditional = False
        device = torch.device("cpu")

        def __init__(self, images):
            super().__init__()
            self.images = images

        def sample(self, n, y=None, generator=None):
            return self.images[:n]

    candidates = [Fixed(digits), Fixed(F.avg_pool2d(digits, 3, 1, 1)), Fixed(torch.rand_like(digits))]
    scores = {}
    for bf16 in (False, True):
        quality = SampleQuality(data, cfg.data, n=500, bf16=bf16)
        assert quality.settings["features_bf16"] is bf16
        scores[bf16] = [quality.score(m) for m in candidates]
    assert scores[True] == pytest.approx(scores[False], rel=1e-2)
    assert scores[True] == sorted(scores[True]) and scores[False] == sorted(scores[False])


def test_summary_and_evaluate_give_the_same_likelihood_under_one_name(tmp_path):
    """One quantity, one name, one definition: summary.json's likelihood is evaluate's (fp32, the same keys and
    values for the same weights); the per-epoch training-precision number is the monitor_* of metrics.jsonl."""
    from vaelab.evaluate import evaluate

    run = tmp_path / "r"
    summary = train(tiny_config(**{"train.epochs": 1, "train.precision": "bf16", "train.track_best": "false"}), run,
                    progress=False)
    evaluated = evaluate(run, num_samples=20, features=["pixels"], k=0, utility=False, progress=False, weights="last")
    for key in ("elbo_nats", "elbo_bits_per_dim", "kl_nats", "reconstruction_nll_nats", "reconstruction_mse_per_pixel"):
        assert summary["likelihood"][key] == pytest.approx(evaluated["likelihood"][key], rel=1e-6), key
    assert json.loads((run / "summary.json").read_text())["likelihood"]["elbo_nats"] == summary["likelihood"]["elbo_nats"]
    epoch_rows = [r for r in RunFolder(run).read_metrics() if r["event"] == "epoch"]
    assert "monitor_elbo" in epoch_rows[-1] and "elbo_nats" not in epoch_rows[-1]


def test_weight_average_follows_the_ema_with_its_warm_up_by_hand():
    from vaelab.training.weight_average import WeightAverage, ema_decay_at

    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model, decay = make(), 0.9
    average = WeightAverage(make(), model, decay)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert [ema_decay_at(decay, t) for t in (1, 2, 100)] == [2 / 11, 3 / 12, 0.9]
    for t in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))  # moves BatchNorm's running statistics and its integer counter
        average.update(model)
        d = ema_decay_at(decay, t)
        for key, value in model.state_dict().items():
            expected[key] = value.clone() if not value.is_floating_point() else d * expected[key] + (1 - d) * value
    got = average.model.state_dict()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-6), key
    assert int(got["1.num_batches_tracked"]) == 5
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(make(), model, 1.0)


def test_a_weight_averaged_run_saves_the_average_and_resumes_exactly(tmp_path):
    overrides = {"train.epochs": 2, "train.ema_decay": 0.9}
    straight = tmp_path / "straight"
    train(tiny_config(**overrides), straight, progress=False)
    state = RunFolder(straight).load_checkpoint()
    saved = weights(straight)
    # what sample/evaluate load is the average the checkpoint carries, not the trained weights
    assert_same_weights(saved, {k: v.contiguous() for k, v in state["average"]["weights"].items()})
    assert not any(torch.equal(saved[k], state["model"][k].contiguous()) for k in saved if k.endswith(".weight"))
    assert state["average"]["updates"] == state["step"]

    mid = tmp_path / "mid"
    train(tiny_config(**overrides, **{"train.checkpoint_every_steps": 7, "train.max_steps": 17}), mid, progress=False)
    train(tiny_config(**overrides, **{"train.checkpoint_every_steps": 7}), mid, resume=True, progress=False)
    assert_same_weights(saved, weights(mid))
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_config(**{"train.ema_decay": 1.5})


def test_a_ctrl_c_in_the_end_of_run_work_stops_at_once_and_resume_redoes_it(tmp_path, monkeypatch):
    """After the last step one Ctrl-C is enough (the end-of-run work can take minutes): the run stops with a
    checkpoint at its last step, says it was interrupted, and a resume does the end-of-run work again."""
    import os

    import vaelab.training.end_of_run as end_of_run

    real = end_of_run.held_out_likelihood
    monkeypatch.setattr(end_of_run, "held_out_likelihood",
                        lambda *a, **k: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5), real(*a, **k))[-1])
    run = tmp_path / "run"
    result = train(tiny_config(**{"train.epochs": 1, "train.checkpoint_every_epochs": 0}), run, progress=False)
    assert result["interrupted"] and result["step"] == 35 and not (run / "summary.json").exists()
    assert RunFolder(run).load_checkpoint()["step"] == 35
    monkeypatch.setattr(end_of_run, "held_out_likelihood", real)
    summary = train(tiny_config(**{"train.epochs": 1, "train.checkpoint_every_epochs": 0}), run, resume=True,
                    progress=False)
    assert summary["steps"] == 35 and (run / "summary.json").is_file()
