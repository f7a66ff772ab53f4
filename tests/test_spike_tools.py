"""The spike tools of benchmarks/ (spikes.py, spike_replay.py): what RESULTS.md's AVAE diagnosis rests on."""

import importlib.util
import sys
from pathlib import Path

import torch

from vaelab.config import load_config
from vaelab.run import RunFolder
from vaelab.training.loop import train

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rows(l_g, l_d):
    return [{"step": i, "epoch": 60 + i // 10, "L_g": g, "L_d": d} for i, (g, d) in enumerate(zip(l_g, l_d))]


def test_spikes_are_found_merged_and_told_apart_by_which_energy_rose_first():
    find = benchmark("spikes").find_spikes
    calm_g, calm_d = [0.1] * 100, [0.05] * 100
    l_g, l_d = list(calm_g), list(calm_d)
    l_g[20:24] = [0.16, 0.2, 0.5, 0.9]  # L_g climbs, L_d stays: the fakes' side first
    l_g[40], l_g[45] = 0.6, 0.7  # 17 steps after the first: a spike of its own at gap 10, the same one at gap 50
    l_d[96:99] = [0.09, 0.3, 0.2]  # L_d first, 52 steps after the last spiking step
    l_g[98] = 0.5
    spikes = find(rows(l_g, l_d), threshold=3.0, gap=10)
    assert [(s["step"], s["kind"]) for s in spikes] == [(22, "fakes"), (40, "fakes"), (97, "reals")]
    assert spikes[0]["peak_L_g"] == 0.9 and spikes[2]["peak_L_d"] == 0.3
    merged = find(rows(l_g, l_d), threshold=3.0, gap=50)
    assert [s["step"] for s in merged] == [22, 97] and merged[0]["peak_L_g"] == 0.9
    assert find(rows(calm_g, calm_d), threshold=3.0, gap=50) == []


def test_a_replay_repeats_the_run_and_a_frozen_discriminator_changes_only_what_it_should(tmp_path):
    replay = benchmark("spike_replay").replay
    sets = {"model.filters": 8, "model.latent_dim": 4, "train.batch_size": 32, "train.log_every": 1,
            "train.tensorboard": "false", "train.eval_images": 64, "train.num_sample_images": 16,
            "train.max_steps": 8, "train.checkpoint_every_steps": 4, "train.keep_checkpoints": 10,
            "train.track_best": "false", "train.precision": "fp32", "train.device": "cpu"}
    cfg = load_config(preset="avae-khan-mnist", overrides=[f"{k}={v}" for k, v in sets.items()])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    logged = {r["step"]: r for r in RunFolder(run).read_metrics() if r.get("event") == "step"}
    work = tmp_path / "work"
    work.mkdir()
    again = replay(run, 4, 4, work)
    assert sorted(again) == [5, 6, 7, 8]
    assert all(again[s][k] == logged[s][k] for s in again for k in ("L_g", "L_d", "L_e", "L_dis"))
    frozen = replay(run, 4, 4, work, {"discriminator": 0.0})
    assert frozen[5]["L_d"] == logged[5]["L_d"]  # step 5's losses come before any replayed update
    assert frozen[8]["L_d"] != logged[8]["L_d"]
    start = RunFolder(run).load_checkpoint(run / "checkpoints" / "step-00000004.pt")["model"]
    end = RunFolder(work / "1").load_checkpoint()["model"]
    discriminator = [k for k in start if k.startswith("discriminator.")]
    decoder = [k for k in start if k.startswith("decoder.") and "running" not in k and "num_batches" not in k]
    assert discriminator and all(torch.equal(start[k], end[k]) for k in discriminator)
    assert any(not torch.equal(start[k], end[k]) for k in decoder)
