"""Train mnist5k presets end to end and record epochs, wall time, images/s, final numbers and sample grids.

    python benchmarks/train_presets.py [PRESET ...] [--runs /tmp/vaelab-bench] [--set key=value ...]

Writes benchmarks/grids/<preset>.png and prints a Markdown table row per preset (pasted into RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
MNIST_PRESETS = ["vae-mnist", "vae-wss18-mnist", "cvae-mnist", "cvae-mnist-16", "dcvae-ssim-mnist",
                 "dcgan-mnist", "wgan-gp-mnist", "acgan-mnist"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("presets", nargs="*", default=MNIST_PRESETS)
    parser.add_argument("--runs", default="/tmp/vaelab-bench")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    rows = []
    for preset in args.presets:
        out = Path(args.runs) / preset
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "vaelab", "train", "--preset", preset, "--out", str(out), "--no-progress"]
        for s in args.sets:
            command += ["--set", s]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
        grids = sorted((out / "samples").glob("*-samples.png"))
        shutil.copy(grids[-1], HERE / "grids" / f"{preset}.png")
        lik = summary.get("likelihood", {})
        final = lik.get("elbo_nats", lik.get("reconstruction_loss"))
        kind = "test ELBO" if "elbo_nats" in lik else ("test reconstruction loss" if lik else "")
        final_text = f"{kind} {final:.2f}" if final is not None else "n/a (no encoder)"
        rows.append(f"| {preset} | {summary['epochs_done']} | {wall:.0f} | {summary['train_seconds']:.0f} | "
                    f"{summary['images_per_s']:.0f} | {final_text} | grids/{preset}.png |")
        print(rows[-1], flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    print("| preset | epochs | wall s | train s | images/s | final | grid |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
