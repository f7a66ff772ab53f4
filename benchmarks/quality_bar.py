"""The hybrids' quality bar (issue 15): train each preset at its default budget over several seeds, evaluate, and
print the table of RESULTS.md (mean +- standard deviation over the seeds).

    python benchmarks/quality_bar.py [--presets gvae-sagar-mnist avae-khan-mnist ...] [--seeds 0 1 2]
                                     [--runs /tmp/vaelab-quality] [--set key=value ...] [--weights best|last]
                                     [--same-budget-baseline vae-mnist] [--split test|validation]

Each run is `vaelab train --preset P --seed S`, then `vaelab evaluate RUN --num-samples 1000 --k 0 --no-utility`
(1,000 samples against the 1,000 mnist5k test images, domain-classifier feature space). The protocol (issue 32):
a probe that chooses a setting compares its candidates with `--split validation` (500 held-out training images);
`--split test` (the default) is for the number reported once the choice is made. Each run keeps the epoch its
training scored best on the validation images; `evaluate` draws its latents from a seed stream of its own. Runs go one at a time:
two training processes on 2 cores slow each other ~20x. Conditional presets also report the label accuracy of
`sample --label k` (the domain classifier's agreement with the requested class). `--same-budget-baseline vae-mnist`
then trains that preset for the runs' mean optimizer-step time on the same machine, each seed: the bar "beats a VAE
trained for the same wall-clock budget" measured in one command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import classifier_space  # benchmarks/ is the script's folder

HYBRIDS = ["vae-mnist", "vaegan-mnist", "gvae-sagar-mnist", "avae-khan-mnist", "began-star-mnist"]
COLUMNS = [("budget_s", "train s", "{:.0f}"), ("fid", "FID", "{:.1f}"), ("kid", "KID", "{:.3f}"),
           ("precision", "precision", "{:.2f}"), ("recall", "recall", "{:.2f}"), ("classes", "classes", "{:.1f}"),
           ("sharpness", "sharpness", "{:.3f}"), ("kl", "KL nats", "{:.1f}"),
           ("recon_mse", "recon MSE/px", "{:.4f}"), ("recon_fid", "recon FID", "{:.1f}"),
           ("recon_recall", "recon recall", "{:.2f}"), ("label_accuracy", "label acc.", "{:.3f}")]


def run_one(preset: str, seed: int, sets: list[str], root: Path, weights: str, label: str | None = None,
            split: str = "test") -> dict:
    out = root / f"{preset}-s{seed}{'-baseline' if label else ''}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "vaelab", "train", "--preset", preset, "--out", str(out), "--no-progress",
               "--seed", str(seed), "--set", "train.trackers=[]"]
    for s in sets:
        command += ["--set", s]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    subprocess.run([sys.executable, "-m", "vaelab", "evaluate", str(out), "--num-samples", "1000", "--k", "0",
                    "--no-utility", "--weights", weights, "--split", split], check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    result = json.loads((out / "eval" / "metrics.json").read_text())
    space = classifier_space(result)
    lik = result.get("likelihood", {})
    row = {"preset": label or preset, "seed": seed, "split": result["split"], "budget_s": summary["train_seconds"],
           "wall_s": wall,
           "epochs": summary["epochs_done"], "precision_mode": summary["precision"], "weights": result.get("weights"),
           "fid": space["fid"], "kid": space["kid"], "precision": space["precision"], "recall": space["recall"],
           "classes": space["class_coverage"]["classes_present"], "sharpness": result["sample_metrics"]["sharpness_samples"],
           "kl": lik.get("kl_nats"), "recon_mse": lik.get("reconstruction_mse_per_pixel"),
           "recon_fid": space.get("reconstructions", {}).get("fid"),
           "recon_recall": space.get("reconstructions", {}).get("recall"),
           "label_accuracy": space.get("conditional_accuracy")}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| preset | seeds | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        cells = []
        for key, _, fmt in COLUMNS:
            values = [r[key] for r in mine if r.get(key) is not None]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(fmt.format(values[0]))
            else:
                cells.append(f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}")
        lines.append(f"| `{preset}` | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=HYBRIDS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", default="/tmp/vaelab-quality")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--weights", default="best", choices=["best", "last"])
    parser.add_argument("--split", default="test", choices=["test", "validation"],
                        help="validation for a probe that chooses a setting; test for the reported number")
    parser.add_argument("--same-budget-baseline", metavar="PRESET",
                        help="then train PRESET (e.g. vae-mnist; without the --set values) for each seed for the mean "
                             "optimizer-step time of the runs above, on this machine: the same-wall-clock comparison")
    args = parser.parse_args()
    rows = [run_one(p, s, args.sets, Path(args.runs), args.weights, split=args.split)
            for p in args.presets for s in args.seeds]
    if args.same_budget_baseline:
        budget = round(statistics.mean(r["budget_s"] for r in rows))
        sets = [f"train.time_budget={budget}s", "train.epochs=100000"]  # the budget, not the epochs, ends it
        label = f"{args.same_budget_baseline} ({budget} s)"
        rows += [run_one(args.same_budget_baseline, s, sets, Path(args.runs), args.weights, label, args.split)
                 for s in args.seeds]
    print(f"split: {args.split}")
    print(table(rows))


if __name__ == "__main__":
    main()
