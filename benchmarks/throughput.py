"""Training / sampling / evaluation throughput, FLOP rate against the machine's measured matmul peak, peak memory.

    python benchmarks/throughput.py [--presets vae-mnist ...] [--precision fp32 bf16] [--steps 60] [--out FILE]

Training throughput is the median of 5 windows of ``steps`` optimizer steps after warm-up, through the real
training path (Trainer + model.training_step + the UpdateContext), data served from the in-memory tensor.
FLOPs per image come from torch.utils.flop_counter over one training step (forward + backward); the peak is
a large square matmul timed on this machine in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from vaelab.config import load_config
from vaelab.data import epoch_batches, iterate_batches
from vaelab.accel import autocast as _autocast
from vaelab.training import Trainer

MNIST_PRESETS = ["vae-mnist", "vae-wss18-mnist", "cvae-mnist", "dcvae-ssim-mnist", "dcgan-mnist", "wgan-gp-mnist",
                 "acgan-mnist", "vaegan-mnist", "gvae-sagar-mnist", "avae-khan-mnist", "began-star-mnist"]


def shapes_folder(root: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    """``count`` generated RGB PNGs of ``size`` px: a few random ellipses and rectangles on a coloured ground."""
    from PIL import Image, ImageDraw

    rng = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=rng))
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.new("RGB", (size, size), tuple(rand(0, 256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rand(1, 4)):
            x0, y0 = rand(0, size - 8), rand(0, size - 8)
            box = (x0, y0, x0 + rand(6, size // 2), y0 + rand(6, size // 2))
            colour = tuple(rand(0, 256) for _ in range(3))
            (draw.ellipse if rand(0, 2) else draw.rectangle)(box, fill=colour)
        img.save(root / f"{i:05d}.png")
    return root


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def trainer_for(preset: str, precision: str, extra: list[str], out: Path) -> Trainer:
    cfg = load_config(preset=preset, overrides=[f"train.precision={precision}", "train.trackers=[]",
                                                "train.device=cpu", *extra])
    return Trainer(cfg, out, progress=False)


def train_throughput(trainer: Trainer, steps: int, windows: int = 5) -> dict:
    t = trainer.cfg.train
    data = trainer.data.train
    batches = []
    epoch = 0
    while len(batches) < steps * (windows + 1):
        batches += epoch_batches(len(data), t.batch_size, t.seed, epoch)
        epoch += 1
    stream = iterate_batches(data, batches, trainer.device)
    trainer.model.train()
    rates = []
    for w in range(windows + 1):  # window 0 is warm-up
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(stream))
            trainer.updater.step += 1
        if w:
            rates.append(steps * t.batch_size / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "windows": rates}


def flops_per_image(trainer: Trainer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    t = trainer.cfg.train
    batch = next(iterate_batches(trainer.data.train, epoch_batches(len(trainer.data.train), t.batch_size, 0, 0)[:1],
                                 trainer.device))
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            trainer.train_step(batch)
    except RuntimeError:  # the flop counter cannot follow autograd.grad(create_graph=True) (gradient penalties)
        return float("nan")
    return counter.get_total_flops() / t.batch_size


@torch.no_grad()
def sample_throughput(model, n: int = 2000, batch: int = 500) -> float:
    model.eval()
    y = torch.zeros(batch, dtype=torch.long) if model.is_conditional else None
    model.sample(batch, y=y)
    start = time.perf_counter()
    for _ in range(n // batch):
        model.sample(batch, y=y)
    return n / (time.perf_counter() - start)


@torch.no_grad()
def iwae_throughput(model, x: torch.Tensor, y: torch.Tensor | None, k: int = 1000, images: int = 100) -> float:
    """Images per second of the K-sample importance-weighted bound (extrapolate to 1,000 images)."""
    model.eval()
    start = time.perf_counter()
    for i in range(0, images, 50):
        model.log_likelihood(x[i : i + 50], k, None if y is None else y[i : i + 50])
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="*", default=MNIST_PRESETS)
    parser.add_argument("--precision", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--iwae", action="store_true", help="also time the K=1000 IWAE bound")
    parser.add_argument("--compile", action="store_true", help="train.compile=true (compile time is in the warm-up window)")
    parser.add_argument("--rgb64", type=int, default=0, metavar="N",
                        help="train on N generated 64x64 RGB images (a folder of random shapes) instead of mnist5k")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.rgb64:
        folder = shapes_folder(Path(tempfile.mkdtemp()) / "shapes64", args.rgb64)
        args.sets += [f"data.name=folder:{folder}", "data.image_size=64", "data.channels=3"]
    torch.manual_seed(0)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s")
    rows = []
    print("| preset | precision | batch | train img/s | GFLOP/img | achieved TFLOP/s | % of matmul peak | sample img/s |"
          + (" IWAE K=1000 img/s |" if args.iwae else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.iwae else ""))
    for preset in args.presets:
        for precision in args.precision:
            with tempfile.TemporaryDirectory() as tmp:
                sets = [*args.sets, *(["train.compile=true"] if args.compile else [])]
                trainer = trainer_for(preset, precision, sets, Path(tmp) / "run")
                flops = flops_per_image(trainer)
                thr = train_throughput(trainer, args.steps)
                with _autocast(precision, trainer.device) if precision != "fp32" else nullcontext():
                    samp = sample_throughput(trainer.model)
                    iw = None
                    if args.iwae and trainer.model.has_likelihood:
                        from vaelab.data import first_images

                        test = trainer.data.test
                        labels = test.labels[:100] if trainer.model.is_conditional else None
                        iw = iwae_throughput(trainer.model, first_images(test, 100), labels)
            achieved = flops * thr["images_per_s"]
            row = {"preset": preset, "precision": precision, "batch": trainer.cfg.train.batch_size,
                   "train_images_per_s": thr["images_per_s"], "gflop_per_image": flops / 1e9,
                   "achieved_tflops": achieved / 1e12, "peak_fraction": achieved / peaks[precision],
                   "sample_images_per_s": samp, "iwae_images_per_s": iw}
            rows.append(row)
            line = (f"| {preset} | {precision} | {row['batch']} | {row['train_images_per_s']:.0f} | "
                    f"{row['gflop_per_image']:.4f} | {row['achieved_tflops']:.4f} | {100 * row['peak_fraction']:.1f}% | "
                    f"{samp:.0f} |")
            if args.iwae:
                line += f" {iw:.1f} |" if iw else " n/a |"
            print(line, flush=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process: {peak_rss:.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"peaks": peaks, "rows": rows, "peak_rss_mib": peak_rss}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
