"""The prepared GPU check (issue 40): one command, under 8 minutes on one GPU, that trains the 64 px presets on a
photo-like scale folder for a fixed number of steps (bf16 autocast, channels-last, torch.compile), fits the latent
sampler, evaluates, and prints images/s, GPU utilisation and peak GPU memory beside the input pipeline's images/s
alone (the step, not the loader, must be the bottleneck).

    python benchmarks/gpu_check.py                         # CUDA; a Markdown table on stdout
    python benchmarks/gpu_check.py --device cpu --images 2000 --steps 5 --presets vaegan-larsen-celeba64  # dry run

Runs vaelab from the source tree (the device machine has torch but no registry; see the device tool's README for
carrying missing wheels). CI never needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def gpu_utilisation(stop: threading.Event, samples: list[float]) -> None:
    """nvidia-smi's utilisation.gpu every 0.5 s until ``stop``."""
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            samples.append(float(out[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return
        stop.wait(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--presets", nargs="+", default=["vaegan-larsen-celeba64", "avae-khan-celeba64"])
    parser.add_argument("--root", default="/tmp/vaelab-gpu")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    import torch

    from scale import make_folder
    from vaelab.config import DataConfig, load_config
    from vaelab.data import epoch_batches, iterate_batches, load_data
    from vaelab.evaluate import evaluate
    from vaelab.training import train

    cuda = args.device.startswith("cuda")
    card = torch.cuda.get_device_name(0) if cuda else "cpu"
    folder = make_folder(Path(args.root), args.images, 64)
    start = time.perf_counter()
    data = load_data(DataConfig(name=f"folder:{folder}", image_size=64))
    print(f"# {card}; folder of {args.images:,} images loaded in {time.perf_counter() - start:.1f} s", flush=True)
    order = epoch_batches(len(data.train), 64, seed=0, epoch=0)[:200]
    start = time.perf_counter()
    count = 0
    for batch in iterate_batches(data.train, order, torch.device(args.device)):
        count += batch["x"].shape[0]
    if cuda:
        torch.cuda.synchronize()
    pipeline = count / (time.perf_counter() - start)
    print(f"# input pipeline alone: {pipeline:,.0f} images/s (batches of 64 to {args.device})", flush=True)
    print("| preset | card | precision | compile | train images/s | pipeline images/s | GPU util % (mean) | "
          "peak GPU GiB | sampler fit s | evaluate s | FID (classifier) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        sets = [f"data.name=folder:{folder}", "data.image_size=64", f"train.device={args.device}",
                f"train.compile={'false' if args.no_compile or not cuda else 'true'}", "train.trackers=[]",
                "train.precision=auto", "train.checkpoint_every_epochs=0"]
        cfg = load_config(preset=preset, overrides=sets)
        cfg.train.max_steps = args.steps
        run = Path(args.root) / f"run-{preset}"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        stop, util = threading.Event(), []
        watcher = threading.Thread(target=gpu_utilisation, args=(stop, util), daemon=True)
        if cuda:
            watcher.start()
        start = time.perf_counter()
        summary = train(cfg, run, progress=False)
        stop.set()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        start = time.perf_counter()
        result = evaluate(run, device=args.device, progress=False, utility=False)
        evaluate_s = time.perf_counter() - start
        spaces = result["sample_metrics"]["features"]
        fid = next((v["fid"] for k, v in spaces.items() if k.startswith("classifier")), float("nan"))
        sampler_s = json.loads((run / "sampler-gmm.json").read_text())["settings"].get("fit_seconds", float("nan")) \
            if (run / "sampler-gmm.json").is_file() else float("nan")
        print(f"| {preset} | {card} | {summary['precision']} | {cfg.train.compile} | {summary['images_per_s']:,.0f} | "
              f"{pipeline:,.0f} | {sum(util) / len(util) if util else float('nan'):.0f} | {peak:.2f} | "
              f"{sampler_s:.1f} | {evaluate_s:.1f} | {fid:.1f} |", flush=True)


if __name__ == "__main__":
    main()
