"""The scale harness (issue 40): every verb's wall time and peak memory on a photo-like folder of N images.

    python benchmarks/scale.py --images 10000 --size 64              # one folder size (made once under --root)
    python benchmarks/scale.py --images 200000 --size 64 --verbs decode train
    python benchmarks/scale.py --latents 128 512 2000 --verbs sampler-fit

Makes (once) a folder of N JPEG images under --root (gradients with a blurred disc or square whose shape and
colour follow its class: 10 class subfolders; in parallel processes), then runs each verb as a user would, in a fresh process, and records its wall
time and the peak resident memory of its whole process tree (sampled every 0.1 s from /proc: Linux only), beside
the memory-mapped pixel cache's size. Each run appends one Markdown row per verb to --table (default
benchmarks/scale-rows.md) with the date, commit and CPU, and prints it.

Verbs: decode (the first load: decoding into the pixel cache), load (a later load from the cache), pipeline (the
input pipeline's images/s alone, batches of 64 from the cache), train (--max-steps 10 from a cleared domain
classifier: time to the first step and each end-of-run phase from the run's log), fit-sampler, evaluate,
sample (--num 50000 --out DIR), compare, attributes, anomaly, explore (start-up until it serves), sampler-fit
(a gmm fit on 20,000 synthetic codes of each --latents size, every candidate form and size a run's fit compares).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VERBS = ("decode", "load", "pipeline", "train", "fit-sampler", "evaluate", "sample", "compare", "attributes",
         "anomaly", "explore", "sampler-fit")


CLASS_COLOURS = np.array([[230, 60, 60], [60, 200, 60], [60, 90, 230], [230, 200, 50], [200, 60, 200],
                          [50, 200, 210], [240, 140, 40], [140, 90, 40], [250, 250, 250], [20, 20, 20]])


def _make_image(task):
    """One photo-like JPEG of class ``c``: a two-colour gradient with a blurred disc (classes 0-4) or square (5-9)
    near the class's colour, of random place and size: classes a domain classifier can learn, as a user's would."""
    from PIL import Image, ImageDraw, ImageFilter

    path, size, seed, c = task
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[:, None, None]
    base = (a * (1 - t) + b * t) * np.ones((size, size, 3))
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    x, y, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [int(rng.integers(size // 6, size // 3))]
    colour = tuple(int(v) for v in np.clip(CLASS_COLOURS[c] + rng.integers(-30, 31, 3), 0, 255))
    (draw.ellipse if c < 5 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=colour)
    img.filter(ImageFilter.GaussianBlur(size / 64)).save(path, quality=90)


def make_folder(root: Path, images: int, size: int, classes: int = 10) -> Path:
    """The folder of ``images`` JPEGs of ``size`` px under ``root`` (reused when complete)."""
    folder = root / f"classes-{images}-{size}px"
    done = folder / ".complete"
    if done.is_file():
        return folder
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    tasks = [(folder / f"class{i % classes}" / f"{i:07d}.jpg", size, i, i % classes) for i in range(images)]
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        for count, _ in enumerate(pool.imap_unordered(_make_image, tasks, chunksize=256), 1):
            if count % 20_000 == 0:
                print(f"# made {count:,}/{images:,} images", file=sys.stderr, flush=True)
    done.write_text(f"{images} images in {time.perf_counter() - start:.0f} s\n")
    return folder


def _tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes of ``pid`` and every process below it (from /proc): all of them, and the anonymous ones alone
    (what the processes allocated, without file-backed pages: the memory-mapped pixel cache, libraries' code)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, anon, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            total += int(fields["VmRSS"].split()[0]) * 1024
            anon += int(fields["RssAnon"].split()[0]) * 1024
        except (OSError, KeyError, IndexError, ValueError):
            pass
    return total, anon


def measure(command: list[str], log: Path, until: str | None = None, timeout: float = 3600) -> dict:
    """Run ``command`` (output to ``log``); its wall seconds, peak tree RSS in GiB (all, and anonymous alone: what
    it holds besides the memory-mapped pixels and code), exit code. ``until``: stop it
    (SIGINT) once its output contains this text (a server's start-up)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        peak, peak_anon, stop = 0, 0, threading.Event()

        def sample():
            nonlocal peak, peak_anon
            while not stop.is_set():
                total, anon = _tree_rss(proc.pid)
                peak, peak_anon = max(peak, total), max(peak_anon, anon)
                stop.wait(0.1)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        while proc.poll() is None:
            if until and until in log.read_text(errors="replace"):
                proc.send_signal(2)
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # a server that does not stop on SIGINT
            proc.kill()
            code = proc.wait()
        stop.set()
        watcher.join()
    return {"seconds": seconds, "peak_gib": peak / 2**30, "peak_anon_gib": peak_anon / 2**30, "exit": code}


def phase_lines(log: Path) -> list[str]:
    """The 'X: done, N things in S s (R/s)' lines of vaelab's progress (vaelab/progress.py)."""
    return [m.group(0) for m in re.finditer(r"[^\n]*: done, [^\n]*", log.read_text(errors="replace"))]


def vaelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "vaelab", *args]


def run_verbs(args) -> list[dict]:
    work = Path(args.root)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if "sampler-fit" in args.verbs:
        for latent in args.latents:
            code = (f"import sys, time; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from scale import fit_codes; "
                    f"fit_codes({latent})")
            result = measure([sys.executable, "-c", code], work / f"sampler-fit-{latent}.log")
            detail = (work / f"sampler-fit-{latent}.log").read_text().strip().splitlines()[-1:]
            rows.append({"verb": f"sampler fit, latent {latent:,} (20,000 codes)", **result, "detail": " ".join(detail)})
    verbs = [v for v in args.verbs if v != "sampler-fit"]
    if not verbs:
        return rows
    folder = make_folder(work, args.images, args.size)
    cache = work / "cache"
    os.environ["VAELAB_CACHE"] = str(cache)
    run = work / f"run-{args.images}-{args.size}px"
    data = [f"--data", f"folder:{folder}"]
    label = f"{args.images:,} x {args.size} px"
    for verb in verbs:
        log = work / f"{verb}-{args.images}-{args.size}px.log"
        detail = ""
        if verb in ("decode", "load"):
            if verb == "decode":  # this folder's entry only: the other folders' rows stay comparable
                for entry in (cache / "pixels").glob(f"{folder.name}-{args.size}px-*"):
                    shutil.rmtree(entry, ignore_errors=True)
            code = (f"from vaelab.config import DataConfig; from vaelab.data import load_data; "
                    f"d = load_data(DataConfig(name='folder:{folder}', image_size={args.size})); print(d.description)")
            result = measure([sys.executable, "-c", code], log)
            if verb == "decode":
                detail = f"{args.images / result['seconds']:,.0f} images/s end to end"
        elif verb == "pipeline":
            code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from scale import pipeline_rate; "
                    f"pipeline_rate('{folder}', {args.size})")
            result = measure([sys.executable, "-c", code], log)
            detail = log.read_text().strip().splitlines()[-1]
        elif verb == "train":
            shutil.rmtree(cache / "classifiers", ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
            result = measure(vaelab("train", "--preset", args.preset, *data, "--set", f"data.image_size={args.size}",
                                    "--max-steps", "10", "--out", str(run), "--no-progress"), log)
            detail = _train_detail(run, log)
        elif verb == "fit-sampler":
            result = measure(vaelab("fit-sampler", str(run)), log)
        elif verb == "evaluate":
            k = [] if args.evaluate_k is None else ["--k", str(args.evaluate_k)]
            result = measure(vaelab("evaluate", str(run), *k), log)
            detail = f"--k {args.evaluate_k}" if k else ""
        elif verb == "sample":
            shutil.rmtree(work / "synthetic", ignore_errors=True)
            result = measure(vaelab("sample", str(run), "--num", "50000", "--out", str(work / "synthetic")), log)
            detail = f"{50000 / result['seconds']:,.0f} images/s"
        elif verb == "compare":
            result = measure(vaelab("compare", str(run), str(run), "--out", str(work / "compare")), log)
        elif verb == "attributes":
            result = measure(vaelab("attributes", str(run)), log)
        elif verb == "anomaly":
            result = measure(vaelab("anomaly", str(run), "--data", f"folder:{folder}", "--out",
                                    str(work / "anomaly.csv")), log)
        elif verb == "explore":
            result = measure(vaelab("explore", str(run), "--port", "7911"), log, until="Running on", timeout=600)
        else:
            raise SystemExit(f"unknown verb {verb}; the verbs are {', '.join(VERBS)}")
        phases = "; ".join(phase_lines(log))
        rows.append({"verb": f"{verb} ({label})", **result, "detail": "; ".join(x for x in (detail, phases) if x)})
        print(f"# {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def _train_detail(run: Path, log: Path) -> str:
    try:
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "no summary (see the log)"
    first = next((e["seconds_since_start"] for e in events if e.get("event") == "first_step"), float("nan"))
    return (f"first step after {first:.1f} s; {summary['images_per_s']:.0f} images/s in the steps "
            f"({summary['train_seconds']:.1f} s of training)")


def pipeline_rate(folder: str, size: int, batches: int = 300) -> None:
    """Images/s of the input pipeline alone: batches of 64 in an epoch's order from the cached split, as floats."""
    import torch

    from vaelab.config import DataConfig
    from vaelab.data import epoch_batches, iterate_batches, load_data

    data = load_data(DataConfig(name=f"folder:{folder}", image_size=size))
    order = epoch_batches(len(data.train), 64, seed=0, epoch=0)[:batches]
    start = time.perf_counter()
    count = sum(b["x"].shape[0] for b in iterate_batches(data.train, order, torch.device("cpu")))
    print(f"input pipeline {count / (time.perf_counter() - start):,.0f} images/s (batches of 64, cached uint8 -> float)")


def fit_codes(latent: int, codes: int = 20_000) -> None:
    """The gmm candidates a run's fit compares, on ``codes`` synthetic codes of ``latent`` dimensions in 10 classes."""
    import torch

    from vaelab.samplers import GMM_COMPONENTS, mixture_forms
    from vaelab.samplers.mixture import fit_mixture

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(codes) % 10
    centres = 3 * torch.randn(10, latent, generator=g)
    x = centres[labels] + torch.randn(codes, latent, generator=g)
    start = time.perf_counter()
    for form in mixture_forms(latent):
        for k in GMM_COMPONENTS:
            fitted = fit_mixture(x, k, labels, [str(c) for c in range(10)], covariance=form)
            fitted.sample(500, generator=torch.Generator().manual_seed(0))
    print(f"{len(mixture_forms(latent)) * len(GMM_COMPONENTS)} candidates ({', '.join(mixture_forms(latent))}) fitted "
          f"and drawn in {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--preset", default="vaegan-larsen-celeba64")
    parser.add_argument("--verbs", nargs="+", default=[v for v in VERBS if v != "sampler-fit"])
    parser.add_argument("--latents", nargs="+", type=int, default=[128, 512, 2000])
    parser.add_argument("--evaluate-k", type=int, default=None, help="evaluate's importance samples (its default "
                        "1,000 over every test image is a GPU's work at 128 px: --evaluate-k 0 for the rest)")
    parser.add_argument("--root", default="/tmp/vaelab-scale")
    parser.add_argument("--table", default=str(ROOT / "benchmarks" / "scale-rows.md"))
    args = parser.parse_args()
    rows = run_verbs(args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    with open(args.table, "a") as fh:
        for row in rows:
            line = (f"| {row['verb']} | {row['seconds']:.1f} | {row['peak_gib']:.2f} | "
                    f"{row.get('peak_anon_gib', float('nan')):.2f} | {row['exit']} | {row['detail']} "
                    f"| {date.today()} {commit} {cpu}, {os.cpu_count()} cores |")
            fh.write(line + "\n")
            print(line, flush=True)


if __name__ == "__main__":
    main()
