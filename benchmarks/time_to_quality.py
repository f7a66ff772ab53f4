"""Time to quality (issue 15, under issue 32's protocol): the training time until a hybrid first meets the quality
bar, read from a run trained with every epoch's checkpoint kept.

    vaelab train --preset vaegan-mnist --set train.keep_checkpoints=100000 --out RUN
    python benchmarks/time_to_quality.py RUN [RUN ...] [--every 1]

Every choice is made on the validation split, the test split is measured once for each chosen checkpoint: each kept
checkpoint draws 1,000 samples (seed stream ``best_weights``) that are scored against the 500 validation images in
the domain classifier's space (FID, precision and recall with k = 3, classes present); the first checkpoint at the
bar and the checkpoint with the lowest validation FID are chosen from those rows, and only those two are measured on
the 1,000 test images with `vaelab evaluate`'s own draws (seed stream ``evaluate_samples``). Reading the first epoch
at the bar, or the lowest FID over checkpoints, off test numbers would pick on their noise (too early, too low).
The bar of issue 15: all ten classes and precision and recall >= 0.5 (BEGAN*: at least 8 classes). "train s" is
the checkpoint's optimizer-step time (the training time a time budget counts). A run with train.ema_decay is scored
on its weight average, what it samples from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vaelab.data import first_images, load_data
from vaelab.evaluate import generate
from vaelab.metrics import features as feats
from vaelab.metrics import samples as sm
from vaelab.models import build_model
from vaelab.processes import stream_seed
from vaelab.run import RunFolder, load_checkpoint_into


def meets_bar(row: dict, model_name: str) -> bool:
    if model_name == "began_star":
        return row["classes"] >= 8
    return row["classes"] == 10 and row["precision"] >= 0.5 and row["recall"] >= 0.5


def measure(extractor, f_real: torch.Tensor, fake: torch.Tensor) -> dict:
    f_fake, logits = extractor.embed(fake)
    pr = sm.precision_recall(f_real, f_fake, k=3)
    return {"fid": sm.fid(f_real, f_fake), "precision": pr["precision"], "recall": pr["recall"],
            "classes": sm.class_coverage(logits, logits.shape[1])["classes_present"]}


def scan(run_path: Path, every: int) -> tuple[list[dict], dict]:
    """(a row per scored checkpoint, on the validation split; the test numbers of the chosen checkpoints)."""
    run = RunFolder(run_path)
    cfg = run.read_config()
    data = load_data(cfg.data)
    extractor = feats.ClassifierExtractor(feats.cached_classifier(data, cfg.data))
    f_val, _ = extractor.embed(first_images(data.validation, len(data.validation)))
    model = build_model(cfg.model).eval()
    rows = []
    for path in run.checkpoints()[::every]:
        state = load_checkpoint_into(model, path)
        with torch.no_grad():
            fake = model.sample(1000, generator=torch.Generator().manual_seed(stream_seed("best_weights", 0))).float()
        row = {"path": path, "epoch": state["epoch"], "step": state["step"], "train_s": state["elapsed"],
               **measure(extractor, f_val, fake)}
        row["bar"] = meets_bar(row, cfg.model.name)
        rows.append(row)
        print(f"{run_path.name} epoch {row['epoch']:4d} {row['train_s']:7.0f} s  validation FID {row['fid']:7.1f}  "
              f"P {row['precision']:.2f}  R {row['recall']:.2f}  classes {row['classes']}"
              + ("  bar" if row["bar"] else ""), flush=True)
    chosen = {"first at the bar": next((r for r in rows if r["bar"]), None),
              "lowest validation FID": min(rows, key=lambda r: r["fid"])}
    f_test, _ = extractor.embed(first_images(data.test, 1000))
    tested = {}
    for why, row in chosen.items():
        if row is not None:
            load_checkpoint_into(model, row["path"])
            tested[why] = {**row, "test": measure(extractor, f_test, generate(model, 1000, 0, data.num_classes)[0])}
    return rows, tested


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--every", type=int, default=1, help="score every n-th checkpoint")
    args = parser.parse_args()
    lines = ["| run | checkpoint chosen on validation | epoch | train s | validation FID | test FID | test P | test R "
             "| test classes | epochs at the bar / scored |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in args.runs:
        rows, tested = scan(run, args.every)
        hits = sum(r["bar"] for r in rows)
        if "first at the bar" not in tested:
            lines.append(f"| {run.name} | first at the bar: never | - | - | - | - | - | - | - | 0 / {len(rows)} |")
        for why, row in tested.items():
            t = row["test"]
            lines.append(f"| {run.name} | {why} | {row['epoch']} | {row['train_s']:.0f} | {row['fid']:.1f} | "
                         f"{t['fid']:.1f} | {t['precision']:.2f} | {t['recall']:.2f} | {t['classes']} | "
                         f"{hits} / {len(rows)} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
