"""SIGKILL at random moments, resume each time: the final weights equal an uninterrupted run's."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from vaelab.run import RunFolder

CYCLES = int(os.environ.get("VAELAB_KILL_CYCLES", "3"))  # benchmarks/soak_kill.sh runs many more
EPOCHS = max(3, CYCLES * 25 // 80 + 2)  # 80 steps an epoch; a cycle advances 3-40 steps: room for every kill
SETS = ["model.widths=[16, 32]", "model.latent_dim=8", "train.batch_size=50", f"train.epochs={EPOCHS}",
        "train.log_every=1", "train.checkpoint_every_steps=7", "train.keep_checkpoints=2",
        "train.trackers=[]", "train.num_sample_images=8", "train.seed=5",
        "train.sampler=prior"]  # the end-of-run sampler fit is not what a kill tests (test_samplers.py)


def _command(out, resume=False):
    base = [sys.executable, "-m", "vaelab", "train", "--no-progress"]
    if resume:
        return base + ["--resume", str(out)]
    return base + ["--out", str(out)] + [a for s in SETS for a in ("--set", s)]


def _last_step(run) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("event") == "step":
            steps.append(row["step"])
    return steps[-1] if steps else 0


@pytest.mark.slow
def test_sigkill_and_resume_reaches_the_uninterrupted_result(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_command(straight), check=True, capture_output=True, timeout=600)

    run = tmp_path / "killed"
    rng = random.Random(0)
    kills, resume = 0, False
    while True:
        proc = subprocess.Popen(_command(run, resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < CYCLES:
            start_step = _last_step(run)
            target = start_step + rng.randint(3, 40)
            deadline = time.time() + 120
            while proc.poll() is None and _last_step(run) < target and time.time() < deadline:
                time.sleep(0.002)
            if proc.poll() is None:
                seen = _last_step(run)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc.stderr.close()
                kills += 1
                checkpoint = RunFolder(run).load_checkpoint() if RunFolder(run).checkpoints() else None
                # at most the work since the last checkpoint is lost (7 steps, +1 if the kill hit a checkpoint write)
                assert checkpoint is None or seen - checkpoint["step"] <= 8, (seen, checkpoint["step"])
                for path in RunFolder(run).checkpoints():  # no checkpoint is ever left corrupt
                    torch.load(path, weights_only=True)
                resume = RunFolder(run).exists() and bool(RunFolder(run).checkpoints())
                if not resume:
                    import shutil

                    shutil.rmtree(run, ignore_errors=True)
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
        break
    assert kills == CYCLES
    a, b = load_file(straight / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
