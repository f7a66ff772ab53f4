"""Does bf16 autocast keep the quality of fp32? Train each preset at both precisions over several seeds.

    python benchmarks/precision_quality.py [--presets vae-mnist vaegan-mnist] [--seeds 0 1 2] [--set key=value ...]

VAEs are compared by test ELBO (nats); models without a likelihood by FID and precision/recall in the domain
classifier's feature space (`vaelab evaluate --k 0 --no-utility --features auto`). The fp32 spread over seeds is
the noise the bf16 numbers are judged against. Prints a Markdown table (pasted into RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from common import classifier_space, evaluation, vaelab  # benchmarks/ is the script's folder


def run(preset: str, precision: str, seed: int, sets: list[str], root: Path, split: str = "test") -> dict:
    out = root / f"{preset}-{precision}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "vaelab", "train", "--preset", preset, "--out", str(out), "--no-progress",
               "--precision", precision, "--seed", str(seed), "--set", "train.trackers=[]"]
    for s in sets:
        command += ["--set", s]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    row = {"images_per_s": summary["images_per_s"]}
    if "elbo_nats" in summary.get("likelihood", {}) and split == "test":
        row["test ELBO"] = summary["likelihood"]["elbo_nats"]
    else:
        vaelab("evaluate", out, "--k", "0", "--no-utility", "--split", split, cwd=root)
        metrics = evaluation(out)
        if "elbo_nats" in metrics.get("likelihood", {}):
            row[f"{split} ELBO"] = metrics["likelihood"]["elbo_nats"]
            return row
        space = classifier_space(metrics)
        row.update({"FID (classifier)": space["fid"], "precision": space["precision"], "recall": space["recall"]})
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="*", default=["vae-mnist"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", default="/tmp/vaelab-precision")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="the images scored against: "
                        "validation to choose a precision policy, test for its number")
    args = parser.parse_args()
    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["| preset | precision | seeds | images/s | metric | mean | sd | per seed |", "|---|---|---|---|---|---|---|---|"]
    for preset in args.presets:
        for precision in ("fp32", "bf16"):
            rows = [run(preset, precision, seed, args.sets, root, args.split) for seed in args.seeds]
            speed = statistics.mean(r["images_per_s"] for r in rows)
            for metric in [k for k in rows[0] if k != "images_per_s"]:
                values = [r[metric] for r in rows]
                sd = statistics.stdev(values) if len(values) > 1 else float("nan")
                lines.append(f"| {preset} | {precision} | {len(values)} | {speed:.0f} | {metric} | "
                             f"{statistics.mean(values):.3f} | {sd:.3f} | {' '.join(f'{v:.3f}' for v in values)} |")
                print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
