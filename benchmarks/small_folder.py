"""Good samples from a small folder (issue 34): train a preset on a folder of N mnist5k digits, as a user with a
small folder would, and score what `vaelab sample` gives against the 1,000 mnist5k test digits in an independent
feature space.

    python benchmarks/small_folder.py --presets vaegan-mnist gvae-sagar-mnist --sizes 500 --seeds 0 1 2
                                      [--runs /tmp/vaelab-small] [--set key=value ...] [--weights best|last]
                                      [--sampler prior|gmm|...] [--tag=-aug] [--out rows.jsonl]
                                      [--refit-sampler]

The folder: N digits drawn from mnist5k's training split (N/10 per class, a fixed seed for every run), written as
PNGs in class subfolders; the run sees only the folder (its own every-5th-file test split, its validation share of
the rest, its own domain classifier trained on its ~0.7 N training digits). The score never comes from the run:
1,000 draws of `vaelab.load(RUN)` (the kept weights and the run's default sampler, exactly what `vaelab sample`
draws) against the 1,000 mnist5k test digits, in the classifier vaelab trains on mnist5k's 3,500 training digits
(so the numbers compare with the 4,000-image rows of RESULTS.md): FID, precision, recall, coverage, classes present,
and the memorisation ratio in pixels (samples' median nearest-neighbour distance to the folder's training digits
over that of the test digits; the bar: >= 0.9). Runs go one at a time (two at once on 2 cores crawl).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from common import emit, mean_sd  # benchmarks/ is the script's folder


def write_folder(n: int, root: Path) -> Path:
    """N mnist5k training digits, N/10 per class, as root/<digit>/<i>.png (the same digits for every run)."""
    from vaelab.config import DataConfig
    from vaelab.data import load_data

    folder = root / f"mnist5k-{n}"
    if (folder / "DONE").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    train = load_data(DataConfig(name="mnist5k")).train
    gen = torch.Generator().manual_seed(34)
    per_class = n // 10
    for c in range(10):
        own = (train.labels == c).nonzero().flatten()
        pick = own[torch.randperm(len(own), generator=gen)[:per_class]]
        (folder / str(c)).mkdir(parents=True)
        for i, j in enumerate(pick.tolist()):  # grey PNGs (torchvision's save_image writes RGB)
            Image.fromarray(train.images[j, 0].cpu().numpy()).save(folder / str(c) / f"{i:04d}.png")
    (folder / "DONE").write_text("")
    return folder


@torch.no_grad()
def score(run: Path, sampler: str | None, weights: str, split: str = "test") -> dict:
    """What `vaelab sample RUN` draws, against the mnist5k ``split`` digits (up to 1,000: test, or validation for a
    choice) in vaelab's mnist5k classifier space."""
    from vaelab import load
    from vaelab.config import DataConfig
    from vaelab.data import load_data, spaced_images
    from vaelab.metrics import features as feats
    from vaelab.metrics import samples as sm

    model = load(run, sampler=sampler, weights=weights)
    reference_cfg = DataConfig(name="mnist5k")
    reference = load_data(reference_cfg)
    extractor = feats.ClassifierExtractor(feats.cached_classifier(reference, reference_cfg))
    real, _ = spaced_images(reference.split(split), 1000)
    fake = model.sample(1000, generator=torch.Generator().manual_seed(2024)).float().cpu()
    f_real, _ = extractor.embed(real.float())
    f_fake, logits = extractor.embed(fake)
    folder_train = load_data(model.run_config.data).train
    x_train, _ = spaced_images(folder_train, len(folder_train))
    memo = sm.memorisation(fake.flatten(1), x_train.float().flatten(1), real.float().flatten(1))
    pr = sm.precision_recall(f_real, f_fake, k=3)
    best = json.loads((run / "model-best.json").read_text()) if (run / "model-best.json").is_file() else None
    summary = json.loads((run / "summary.json").read_text())
    return {"fid": sm.fid(f_real, f_fake), **{k: pr[k] for k in ("precision", "recall", "coverage", "density")},
            "classes": sm.class_coverage(logits, 10)["classes_present"], "memorisation_pixels": memo["ratio"],
            "weights": model.weights_file, "sampler": model.sampler_kind,
            "kept_epoch": (best or {}).get("epoch"), "epochs_done": summary["epochs_done"],
            "steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "train_images": len(folder_train), "sampler_chosen": _chosen(run, model.sampler_kind)}


def _chosen(run: Path, kind: str) -> dict | None:
    """The fitted sampler's chosen candidate (its settings, validation FID and memorisation ratios)."""
    meta = run / f"sampler-{kind}.json"
    return json.loads(meta.read_text())["settings"].get("chosen") if meta.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["vaegan-mnist", "gvae-sagar-mnist"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[500])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("/tmp/vaelab-small"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--weights", default="best")
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="the mnist5k digits "
                        "scored against: validation for a choice (a setting, a threshold), test for its number")
    parser.add_argument("--sampler", default=None, help="default: the run's own default (what `vaelab sample` uses)")
    parser.add_argument("--tag", default="", help="appended to the run folders' names (--tag=-aug: '=' before a "
                        "leading dash)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--refit-sampler", action="store_true", help="keep an existing run's weights: refit its "
                        "gmm with the current code (`vaelab fit-sampler RUN --sampler gmm`), then score")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        folder = write_folder(size, args.runs)
        for preset in args.presets:
            for seed in args.seeds:
                run = args.runs / f"{preset}-{size}-s{seed}{args.tag}"
                start = time.perf_counter()
                if args.refit_sampler and (run / "summary.json").is_file():
                    subprocess.run([sys.executable, "-m", "vaelab", "fit-sampler", str(run), "--sampler", "gmm"],
                                   check=True, stdout=subprocess.DEVNULL)
                else:
                    shutil.rmtree(run, ignore_errors=True)
                    command = [sys.executable, "-m", "vaelab", "train", "--preset", preset, "--data",
                               f"folder:{folder}", "--out", str(run), "--no-progress", "--seed", str(seed)]
                    for s in args.sets:
                        command += ["--set", s]
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                row = {"preset": preset, "size": size, "seed": seed, "sets": args.sets, "tag": args.tag,
                       "wall_s": time.perf_counter() - start, **score(run, args.sampler, args.weights, args.split),
                       "split": args.split}
                rows.append(row)
                emit(row, args.out)
    print("| preset | images | seeds | FID | precision | recall | coverage | classes | memorisation px | kept epoch "
          "/ epochs | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for size in args.sizes:
            mine = [r for r in rows if r["preset"] == preset and r["size"] == size]
            cells = [mean_sd([r[k] for r in mine], fmt) for k, fmt in
                     (("fid", "{:.1f}"), ("precision", "{:.2f}"), ("recall", "{:.2f}"), ("coverage", "{:.2f}"),
                      ("classes", "{:.1f}"), ("memorisation_pixels", "{:.2f}"))]
            kept = ", ".join(f"{r['kept_epoch']}/{r['epochs_done']}" for r in mine)
            seconds = mean_sd([r["train_seconds"] for r in mine], "{:.0f}")
            print(f"| {preset} | {size} | {len(mine)} | {' | '.join(cells)} | {kept} | {seconds} |")


if __name__ == "__main__":
    main()
