"""Two CPU processes under torchrun (gloo): identical weights, disjoint shards, rank 0 alone writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_worker.py")


def _run(nproc, out, record, batch, steps, **env_extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent), **env_extra}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + nproc + (os.getpid() % 1000)), str(WORKER), str(out), str(record), str(batch), str(steps)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path):
    _run(2, tmp_path / "two", tmp_path / "two", batch=50, steps=6)
    ranks = [json.loads((tmp_path / f"two-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-9, abs=1e-9)  # identical weights every step
        assert not set(a["indices"]) & set(b["indices"])  # different shards
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "step"] == [1, 2, 3, 4, 5, 6]  # one writer: no duplicates

    _run(1, tmp_path / "one", tmp_path / "one", batch=100, steps=6)
    one = json.loads((tmp_path / "one-rank0.json").read_text())
    for s1, s0, s2 in zip(one["steps"], ranks[0]["steps"], ranks[1]["steps"]):
        assert sorted(s1["indices"]) == sorted(s0["indices"] + s2["indices"])  # the same global batches
    # The same data, the gradient average, and no sampling noise (the worker pins sigma near 0): the updates
    # (final - initial weights) must match the 1-process doubled batch up to float reduction order, and be far
    # closer than a run on one process with the single batch.
    _run(1, tmp_path / "half", tmp_path / "half", batch=50, steps=6)

    def update(name):
        init = torch.load(tmp_path / f"{name}-init.pt", weights_only=True)
        final = load_file(tmp_path / name / "model.safetensors")
        return torch.cat([(final[k] - init[k]).flatten() for k in final if final[k].is_floating_point()])

    two, one, half = update("two"), update("one"), update("half")
    close = float((two - one).norm() / one.norm())
    far = float((half - one).norm() / one.norm())
    assert close < 1e-3 and far > 0.05, (close, far)


@pytest.mark.slow
def test_torchrun_cli_with_default_device_and_folder_trains_one_run(tmp_path):
    """`torchrun -m vaelab train` as README writes it (device auto, no --out): the processes join one gloo group,
    agree on one run folder and print one summary."""
    from conftest import tiny_overrides

    sets = [a for s in tiny_overrides(**{"train.max_steps": 4, "train.epochs": 1}) for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29700 + os.getpid() % 1000), "-m", "vaelab", "train", "--no-progress", *sets]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["vae-mnist"]
    assert result.stdout.count("done: 4 steps") == 1, result.stdout
    summary = json.loads((tmp_path / "runs" / "vae-mnist" / "summary.json").read_text())
    assert summary["processes"] == 2


@pytest.mark.slow
def test_a_nan_on_one_rank_rolls_back_every_rank_together(tmp_path):
    """Rank 1 alone sees a NaN at step 5: both ranks agree it diverged (no rank left waiting in the all-reduce),
    roll back to the step-4 checkpoint together, and finish with identical weights."""
    _run(2, tmp_path / "r", tmp_path / "r", batch=50, steps=8, VAELAB_TEST_NAN_ON_RANK1_AT_STEP="5")
    ranks = [json.loads((tmp_path / f"r-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rollbacks"] for r in ranks] == [1, 1]
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 8  # steps 1-4, 5-8 after the rollback (5 failed)
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-9, abs=1e-9)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["failed_at_step"] for r in rows if r["event"] == "rollback"] == [5]


@pytest.mark.slow
def test_evaluation_split_across_two_processes_equals_one_process(tmp_path):
    """`torchrun -m vaelab evaluate`: likelihood batches, samples and features are split across the processes
    and gathered; the metrics equal a one-process evaluation, and only the main process writes eval/."""
    from conftest import tiny_overrides

    from vaelab.config import load_config
    from vaelab.evaluate import evaluate
    from vaelab.training import train

    run = tmp_path / "run"
    train(load_config(overrides=tiny_overrides(**{"train.max_steps": 20, "train.epochs": 1})), run, progress=False)
    os.chdir(tmp_path)  # the domain classifier goes to ./classifiers/
    # 1,000 test images in 10 likelihood batches and 2 sample chunks: each process takes its share
    one = evaluate(run, k=8, utility=False, progress=False)
    (run / "eval").rename(tmp_path / "eval-one")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29800 + os.getpid() % 1000), "-m", "vaelab", "evaluate", str(run), "--k", "8", "--no-utility"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1  # one report, from the main process
    two = json.loads((run / "eval" / "metrics.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    for key in ("elbo_nats", "iwae_nats", "kl_nats", "reconstruction_mse_per_pixel"):
        assert two["likelihood"][key] == pytest.approx(one["likelihood"][key], rel=1e-6), key
    for name, space in one["sample_metrics"]["features"].items():
        other = two["sample_metrics"]["features"][name]
        for key in ("fid", "precision", "recall", "is"):
            if key in space:
                assert other[key] == pytest.approx(space[key], rel=1e-5), (name, key)
        assert other.get("class_coverage") == space.get("class_coverage")
    assert two["sample_metrics"]["mmd_pixels"]["mmd2"] == pytest.approx(one["sample_metrics"]["mmd_pixels"]["mmd2"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vaegan-mnist", "avae-khan-mnist"])
def test_hybrid_decisions_are_taken_together_on_two_processes(preset, tmp_path):
    """VAE-GAN's skipped discriminator step, its adaptive augmentation's p and AVAE's k_t are decided from values
    averaged over the processes: every rank takes the same decision, so the ranks hold identical weights, p and k_t
    after every step (a rank deciding from its own losses alone would skip a different set of updates, hang in the
    all-reduce or drift)."""
    _run(2, tmp_path / "h", tmp_path / "h", batch=32, steps=12, VAELAB_TEST_PRESET=preset)
    ranks = [json.loads((tmp_path / f"h-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 12
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-9, abs=1e-9)
        assert a["k"] == b["k"] and a["d_updated"] == b["d_updated"]
    assert ranks[0]["parameters"] < 60_000  # the worker's tiny model is tiny in every arch (full width: ~1.7M)
    if preset == "avae-khan-mnist":
        assert len({s["k"] for s in ranks[0]["steps"]}) > 1  # the controller moved, and moved alike
    else:
        # the worker makes rank 0's own losses always below the margin and rank 1's always above it, with their
        # mean on either side by turns: both decisions taken, each by both ranks together
        assert [s["d_updated"] for s in ranks[0]["steps"]] == [0.0, 1.0] * 6
        # adaptive augmentation's p, moved by the mean r_t over the ranks (0.65 > 0.6): up on both, by the 2 x 32
        # real images of each of 4 steps over 1,000, where rank 1 alone (r_t 0.3) would have held it at 0
        p = [[s["augment_p"] for s in r["steps"]] for r in ranks]
        assert p[0] == p[1] and p[0][-1] == pytest.approx(3 * 256 / 1000)
