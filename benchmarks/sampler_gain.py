"""What fitted latent samplers give the same weights (issue 33): the prior against each fitted kind.

    python benchmarks/sampler_gain.py RUN [RUN ...] [--samplers gmm flow two-stage] [--out results.jsonl] [--no-prior]
        [--no-refit]

For each run folder (a model with an encoder) and each kind: `vaelab fit-sampler RUN --sampler KIND` (its settings
chosen on the validation images; an existing fit of that kind is replaced), then `vaelab evaluate RUN --num-samples
1000 --k 0 --no-utility --sampler KIND` (1,000 samples against the 1,000 test images, classifier space), once with
`--sampler prior` too, and, where the sampler is per class, the label accuracy of `--label k` (100 draws per class,
the domain classifier's agreement). The run's default sampler (train.sampler) is left as the last kind fitted
unless that is the run's own default. Prints one JSON row per run and a table per kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from common import classifier_space, emit, evaluation, mean_sd, vaelab  # benchmarks/ is the script's folder


SPLIT = "test"  # --split: validation to choose (a default kind, a setting), test for the number


def evaluate(run: Path, sampler: str) -> dict:
    vaelab("evaluate", run, "--num-samples", "1000", "--k", "0", "--no-utility", "--sampler", sampler, "--split", SPLIT)
    result = evaluation(run)
    space = classifier_space(result)
    return {"fid": space["fid"], "kid": space["kid"], "precision": space["precision"], "recall": space["recall"],
            "coverage": space["coverage"], "density": space["density"],
            "classes": space["class_coverage"]["classes_present"], "floor": space.get("real_data_floor_fid"),
            "memorisation_pixels": result["sample_metrics"].get("memorisation_pixels", {}).get("ratio"),
            "memorisation_features": space.get("memorisation", {}).get("ratio"),
            "sharpness": result["sample_metrics"]["sharpness_samples"]}


def label_accuracy(run: Path, sampler: str) -> float | None:
    """Share of 100 draws per class that the domain classifier calls the class asked for (per-class samplers)."""
    from vaelab import load
    from vaelab.data import load_data
    from vaelab.metrics import features as feats

    model = load(run, sampler=sampler)
    fitted = model.latent_sampler
    if fitted is None or not fitted.class_names:
        return None
    cfg = model.run_config
    extractor = feats.ClassifierExtractor(feats.cached_classifier(load_data(cfg.data), cfg.data))
    y = torch.arange(len(fitted.class_names)).repeat_interleave(100)
    with torch.no_grad():
        x = model.sample(len(y), y=y, generator=torch.Generator().manual_seed(12345)).float()
    _, logits = extractor.embed(x)
    return float((logits.argmax(1) == y).float().mean())


def measure(run: Path, kind: str, fit: bool = True) -> dict:
    if fit or not (run / f"sampler-{kind}.json").is_file():
        subprocess.run([sys.executable, "-m", "vaelab", "fit-sampler", str(run), "--sampler", kind], check=True,
                       capture_output=True, text=True)
    meta = json.loads((run / f"sampler-{kind}.json").read_text())["settings"]
    return {**evaluate(run, kind), "fit_seconds": meta["fit_seconds"], "chosen": meta["chosen"],
            "label_accuracy": label_accuracy(run, kind)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--samplers", nargs="+", default=["gmm"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="the images evaluate scores "
                        "against: validation for a choice, test for its number")
    parser.add_argument("--no-prior", action="store_true", help="skip the prior's evaluation (measured already)")
    parser.add_argument("--no-refit", action="store_true", help="evaluate a run's existing fit of a kind")
    args = parser.parse_args()
    global SPLIT
    SPLIT = args.split
    rows = []
    for run in args.runs:
        row = {"run": run.name, **({} if args.no_prior else {"prior": evaluate(run, "prior")})}
        for kind in args.samplers:
            row[kind] = measure(run, kind, fit=not args.no_refit)
        rows.append(row)
        emit(row, args.out)
    print("| run | sampler | FID | KID | precision | recall | coverage | density | memorisation (pixels / features) "
          "| floor | label acc. | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    kinds = [*([] if args.no_prior else ["prior"]), *args.samplers]
    for r in rows:
        for kind in kinds:
            m = r[kind]
            acc = f"{m['label_accuracy']:.3f}" if m.get("label_accuracy") is not None else "-"
            fit = f"{m['fit_seconds']:.0f}" if "fit_seconds" in m else "-"
            print(f"| {r['run']} | {kind} | {m['fid']:.1f} | {m['kid']:.1f} | {m['precision']:.2f} | "
                  f"{m['recall']:.2f} | {m['coverage']:.2f} | {m['density']:.2f} | {m['memorisation_pixels']:.2f} / "
                  f"{m['memorisation_features']:.2f} | "
                  f"{m['floor']:.2f} | {acc} | {fit} |")
    if len(rows) > 1:
        for kind in kinds:
            cells = [mean_sd([r[kind][key] for r in rows], fmt) for key, fmt in
                     (("fid", "{:.1f}"), ("precision", "{:.2f}"), ("recall", "{:.2f}"), ("coverage", "{:.2f}"),
                                      ("density", "{:.2f}"))]
            print(f"{kind}: FID {cells[0]}, precision {cells[1]}, recall {cells[2]}, coverage {cells[3]}, "
                  f"density {cells[4]}")


if __name__ == "__main__":
    main()
