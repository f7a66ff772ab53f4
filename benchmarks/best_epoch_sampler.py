"""Is the epoch kept under prior samples also the best under a fitted sampler? (issue 33, item 6)

    vaelab train --preset vaegan-mnist --set train.keep_checkpoints=100000 --out RUN
    python benchmarks/best_epoch_sampler.py RUN [RUN ...]

For every kept checkpoint, the training-time score (`SampleQuality`: FID of 500 samples against the 500 validation
images, seed stream ``best_weights``) twice: with prior samples (what training keeps today) and with samples of a
cheap mixture refitted on that checkpoint's codes (a fixed subset of 1,000 training images, 20 components split over
the classes: the candidate for an in-training score). Then, at the epoch each score keeps, the number a user gets:
a 50-component per-class mixture fitted on all the training codes, 1,000 samples against the 1,000 test images
(FID, precision, recall in the domain classifier's space).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vaelab.data import first_images, load_data
from vaelab.data.batches import spaced_indices
from vaelab.data.splits import ImageSet
from vaelab.evaluate import generate
from vaelab.metrics import features as feats
from vaelab.metrics import samples as sm
from vaelab.metrics.quality import SampleQuality
from vaelab.models import build_model
from vaelab.run import RunFolder, load_checkpoint_into
from vaelab.samplers import encode_codes, fit_mixture


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    lines = ["| run | epoch kept by | epoch | validation FID, prior | validation FID, cheap gmm | test FID, gmm-50 | "
             "test P | test R |", "|---|---|---|---|---|---|---|---|"]
    for run_path in args.runs:
        run = RunFolder(run_path)
        cfg = run.read_config()
        data = load_data(cfg.data)
        scorer = SampleQuality(data, cfg.data, n=500, seed=cfg.train.seed)
        model = build_model(cfg.model).eval()
        idx = spaced_indices(len(data.train), 1000)
        subset = ImageSet(images=data.train.images[idx], labels=data.train.labels[idx])
        rows = []
        for path in run.checkpoints():
            epoch = load_checkpoint_into(model, path)["epoch"]
            model.latent_sampler = None
            prior = scorer.score(model)
            start = time.perf_counter()
            codes, labels = encode_codes(model, subset)
            model.latent_sampler = fit_mixture(codes, 20, labels, data.class_names)
            fit_s = time.perf_counter() - start
            cheap = scorer.score(model)
            rows.append({"epoch": epoch, "prior": prior, "cheap": cheap, "path": path})
            print(f"{run_path.name} epoch {epoch:4d}  prior {prior:.1f}  cheap gmm {cheap:.1f} (fit {fit_s:.2f} s)",
                  flush=True)
        extractor = feats.ClassifierExtractor(feats.cached_classifier(data, cfg.data))
        f_test, _ = extractor.embed(first_images(data.test, 1000))
        for key, name in (("prior", "prior score (today)"), ("cheap", "cheap gmm score")):
            best = min(rows, key=lambda r: r[key])
            load_checkpoint_into(model, best["path"])
            codes, labels = encode_codes(model, data.train)
            model.latent_sampler = fit_mixture(codes, 50, labels, data.class_names)
            f_fake, _ = extractor.embed(generate(model, 1000, 0, data.num_classes)[0])
            pr = sm.precision_recall(f_test, f_fake, k=3)
            lines.append(f"| {run_path.name} | {name} | {best['epoch']} | {best['prior']:.1f} | {best['cheap']:.1f} | "
                         f"{sm.fid(f_test, f_fake):.1f} | {pr['precision']:.2f} | {pr['recall']:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
