"""Time to quality (issue 15): the training time until a hybrid first meets the quality bar, read from a run trained
with every epoch's checkpoint kept.

    vaelab train --preset vaegan-mnist --set train.keep_checkpoints=100000 --out RUN
    python benchmarks/time_to_quality.py RUN [RUN ...] [--every 1]

For each kept checkpoint: 1,000 samples (seed 0) against the 1,000 mnist5k test images in the domain classifier's
space, as `vaelab evaluate` measures them (FID, precision and recall with k = 3, classes present). The bar of
issue 15: all ten classes and precision and recall >= 0.5 (BEGAN*: at least 8 classes). "train s" is the
checkpoint's optimizer-step time (the training time a time budget counts). A run with train.ema_decay is scored on
its weight average, what it samples from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vaelab.data import first_images, load_data
from vaelab.metrics import features as feats
from vaelab.metrics import samples as sm
from vaelab.models import build_model
from vaelab.run import RunFolder, read_checkpoint


def meets_bar(row: dict, model_name: str) -> bool:
    if model_name == "began_star":
        return row["classes"] >= 8
    return row["classes"] == 10 and row["precision"] >= 0.5 and row["recall"] >= 0.5


def scan(run_path: Path, every: int) -> list[dict]:
    run = RunFolder(run_path)
    cfg = run.read_config()
    data = load_data(cfg.data)
    extractor = feats.ClassifierExtractor(feats.cached_classifier(data, cfg.data))
    f_real, _ = extractor.embed(first_images(data.test, 1000))
    model = build_model(cfg.model).eval()
    rows = []
    for path in run.checkpoints()[::every]:
        state = read_checkpoint(path)
        average = state.get("average")  # train.ema_decay: the run samples from the weight average
        model.load_state_dict(average["weights"] if average else state["model"])
        with torch.no_grad():
            fake = model.sample(1000, generator=torch.Generator().manual_seed(0)).float()
        f_fake, logits = extractor.embed(fake)
        pr = sm.precision_recall(f_real, f_fake, k=3)
        row = {"epoch": state["epoch"], "step": state["step"], "train_s": state["elapsed"],
               "fid": sm.fid(f_real, f_fake), "precision": pr["precision"], "recall": pr["recall"],
               "classes": sm.class_coverage(logits, 10)["classes_present"]}
        row["bar"] = meets_bar(row, cfg.model.name)
        rows.append(row)
        print(f"{run_path.name} epoch {row['epoch']:4d} {row['train_s']:7.0f} s  FID {row['fid']:7.1f}  "
              f"P {row['precision']:.2f}  R {row['recall']:.2f}  classes {row['classes']}"
              + ("  bar" if row["bar"] else ""), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--every", type=int, default=1, help="score every n-th checkpoint")
    args = parser.parse_args()
    print("| run | first epoch at the bar | train s then | epochs at the bar / scored | best FID (epoch) |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        rows = scan(run, args.every)
        hits = [r for r in rows if r["bar"]]
        best = min(rows, key=lambda r: r["fid"])
        first = f"{hits[0]['epoch']} | {hits[0]['train_s']:.0f}" if hits else "never | -"
        print(f"| {run.name} | {first} | {len(hits)} / {len(rows)} | {best['fid']:.1f} ({best['epoch']}) |")


if __name__ == "__main__":
    main()
