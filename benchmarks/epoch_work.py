"""The work a training run does at each epoch's end, outside the optimizer steps (issue 15, item 6), against the
steps themselves, for mnist5k presets.

    python benchmarks/epoch_work.py [--presets vae-mnist vaegan-mnist avae-khan-mnist] [--repeats 5] [--set k=v]

Builds each preset's real ``Trainer`` in a temporary run folder, trains one epoch (so the classifier cache, the
feature network and the best-weights reference are built), then times each piece of the epoch's end ``repeats``
times (median): the test-ELBO monitor, the best-weights score with its feature network in fp32 and in bf16, the
sample grids and the checkpoint (atomic write + fsync), and the median optimizer step; and the score itself with
fp32 and bf16 features (what the bf16 default changes in the ranking number). Run alone: two processes on
2 cores slow each other ~20x.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from vaelab.config import load_config
from vaelab.data import epoch_batches, iterate_batches, spaced_images
from vaelab.training.loop import Trainer
from vaelab.training.monitor import monitor_likelihood


def median_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(preset: str, repeats: int, sets: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        cfg = load_config(preset, overrides=["train.epochs=1", "train.tensorboard=false", *sets])
        trainer = Trainer(cfg, folder, progress=False)
        trainer.fit()
        t = cfg.train
        order = epoch_batches(len(trainer.data.train), t.batch_size, t.seed, 1)[:12]
        steps = []
        for batch in iterate_batches(trainer.data.train, order, trainer.device):
            start = time.perf_counter()
            trainer.train_step(batch)
            steps.append(time.perf_counter() - start)
        quality = trainer.quality
        row = {"preset": preset, "batches_per_epoch": trainer.batches_per_epoch,
               "step_ms": 1000 * statistics.median(steps[2:]),
               "monitor_ms": median_ms(lambda: monitor_likelihood(trainer.sampled_model, trainer.data.test,
                                                                  t.eval_images, trainer.accel, t.seed), repeats),
               "grids_ms": median_ms(lambda: trainer._write_grids("bench"), repeats),
               "checkpoint_ms": median_ms(trainer.save_checkpoint, repeats)}
        reference, _ = spaced_images(trainer.data.train, quality.n)
        for bf16 in (False, True):
            quality.bf16 = bf16
            quality.real = quality._features(reference)
            name = "bf16" if bf16 else "fp32"
            row[f"score_{name}_ms"] = median_ms(lambda: quality.score(trainer.sampled_model), repeats)
            row[f"score_{name}"] = quality.score(trainer.sampled_model)
        return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["vae-mnist", "vaegan-mnist", "gvae-sagar-mnist",
                                                         "avae-khan-mnist"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="a config override for every preset, e.g. "
                        "train.precision=bf16")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; overrides: {args.set}")
    print("| preset | optimizer step ms | steps per epoch | test-ELBO monitor ms | best-weights score ms (fp32 / bf16 "
          "features) | score fp32 / bf16 | grids ms | checkpoint ms | epoch's end / epoch's steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        r = measure(preset, args.repeats, args.set)
        end = r["monitor_ms"] + r["score_bf16_ms"] + r["grids_ms"] + r["checkpoint_ms"]
        steps = r["step_ms"] * r["batches_per_epoch"]
        print(f"| `{preset}` | {r['step_ms']:.1f} | {r['batches_per_epoch']} | {r['monitor_ms']:.0f} | "
              f"{r['score_fp32_ms']:.0f} / {r['score_bf16_ms']:.0f} | {r['score_fp32']:.2f} / {r['score_bf16']:.2f} | "
              f"{r['grids_ms']:.0f} | {r['checkpoint_ms']:.0f} | "
              f"{end:.0f} / {steps:.0f} ms ({100 * end / steps:.0f}%) |", flush=True)


if __name__ == "__main__":
    main()
