"""What a fitted latent sampler gives the same weights (issue 33): prior against the run's fitted sampler.

    python benchmarks/sampler_gain.py RUN [RUN ...] [--sampler gmm] [--out results.jsonl]

For each run folder (a model with an encoder): `vaelab fit-sampler RUN` (its settings chosen on the validation
images; the run's existing fit is replaced), then `vaelab evaluate RUN --num-samples 1000 --k 0 --no-utility` once
with `--sampler prior` and once with the fitted sampler (1,000 samples against the 1,000 test images, classifier
space), and, where the sampler is per class, the label accuracy of `--label k` (100 draws per class, the domain
classifier's agreement). Prints one JSON row per run and a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch


def evaluate(run: Path, sampler: str) -> dict:
    subprocess.run([sys.executable, "-m", "vaelab", "evaluate", str(run), "--num-samples", "1000", "--k", "0",
                    "--no-utility", "--sampler", sampler], check=True, stdout=subprocess.DEVNULL)
    result = json.loads((run / "eval" / "metrics.json").read_text())
    space = next(v for k, v in result["sample_metrics"]["features"].items() if k.startswith("classifier"))
    return {"fid": space["fid"], "precision": space["precision"], "recall": space["recall"],
            "classes": space["class_coverage"]["classes_present"], "floor": space.get("real_data_floor_fid"),
            "memorisation_pixels": result["sample_metrics"].get("memorisation_pixels", {}).get("ratio"),
            "sharpness": result["sample_metrics"]["sharpness_samples"]}


def label_accuracy(run: Path) -> float | None:
    """Share of 100 draws per class that the domain classifier calls the class asked for (per-class samplers)."""
    from vaelab import load
    from vaelab.data import load_data
    from vaelab.metrics import features as feats

    model = load(run)
    sampler = model.latent_sampler
    if sampler is None or not sampler.class_names:
        return None
    cfg = model.run_config
    extractor = feats.ClassifierExtractor(feats.cached_classifier(load_data(cfg.data), cfg.data))
    y = torch.arange(len(sampler.class_names)).repeat_interleave(100)
    with torch.no_grad():
        x = model.sample(len(y), y=y, generator=torch.Generator().manual_seed(12345)).float()
    _, logits = extractor.embed(x)
    return float((logits.argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sampler", default="gmm")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        fit = subprocess.run([sys.executable, "-m", "vaelab", "fit-sampler", str(run), "--sampler", args.sampler],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        meta = json.loads((run / f"sampler-{args.sampler}.json").read_text())["settings"]
        row = {"run": run.name, "fit": fit, "fit_seconds": meta["fit_seconds"], "chosen": meta["chosen"],
               "prior": evaluate(run, "prior"), args.sampler: evaluate(run, args.sampler),
               "label_accuracy": label_accuracy(run)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    print(f"| run | prior FID / P / R | {args.sampler} FID / P / R | components, spread | memorisation (pixels) "
          f"| floor | label acc. | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p, g = r["prior"], r[args.sampler]
        acc = f"{r['label_accuracy']:.3f}" if r["label_accuracy"] is not None else "-"
        print(f"| {r['run']} | {p['fid']:.1f} / {p['precision']:.2f} / {p['recall']:.2f} | {g['fid']:.1f} / "
              f"{g['precision']:.2f} / {g['recall']:.2f} | {r['chosen']['components']}, {r['chosen']['spread']} | "
              f"{g['memorisation_pixels']:.2f} | {g['floor']:.1f} | {acc} | {r['fit_seconds']:.0f} |")
    if len(rows) > 1:
        for key in ("prior", args.sampler):
            fids = [r[key]["fid"] for r in rows]
            print(f"{key}: FID {statistics.mean(fids):.1f} ± {statistics.stdev(fids):.1f}")


if __name__ == "__main__":
    main()
