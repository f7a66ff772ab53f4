"""Does the reference set of the best-weights score change the epoch a run keeps? (issue 32)

    vaelab train --preset vaegan-mnist --set train.keep_checkpoints=100000 --out RUN
    python benchmarks/best_epoch_reference.py RUN [RUN ...]

For every kept checkpoint, the training-time score (`vaelab.metrics.quality.SampleQuality`: FID of 500 samples, seed
stream ``best_weights``, in the domain classifier's space, bf16 features where the CPU has them) against two
references of 500 images: 500 training images spread over the split (the reference before issue 32) and the 500
validation images (the reference now). Prints the epoch each reference keeps and that epoch's test FID, precision
and recall (1,000 samples with `vaelab evaluate`'s own draws against the 1,000 test images, fp32 features).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from vaelab.data import first_images, load_data
from vaelab.data.splits import ImageSet
from vaelab.evaluate import generate
from vaelab.metrics import features as feats
from vaelab.metrics import samples as sm
from vaelab.metrics.quality import SampleQuality
from vaelab.models import build_model
from vaelab.run import RunFolder, load_checkpoint_into


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    lines = ["| run | reference | epoch kept | its score | test FID | test P | test R |", "|---|---|---|---|---|---|---|"]
    for run_path in args.runs:
        run = RunFolder(run_path)
        cfg = run.read_config()
        data = load_data(cfg.data)
        on_train = copy.copy(data)
        on_train.validation = ImageSet(images=data.train.images, labels=data.train.labels)  # scored against train
        scorers = {"training images": SampleQuality(on_train, cfg.data, n=500, seed=cfg.train.seed),
                   "validation images": SampleQuality(data, cfg.data, n=500, seed=cfg.train.seed)}
        model = build_model(cfg.model).eval()
        scores = {name: [] for name in scorers}
        paths = run.checkpoints()
        for path in paths:
            state = load_checkpoint_into(model, path)
            for name, scorer in scorers.items():
                scores[name].append((scorer.score(model), state["epoch"], path))
            print(f"{run_path.name} epoch {state['epoch']:4d}  " +
                  "  ".join(f"{n}: {scores[n][-1][0]:.1f}" for n in scorers), flush=True)
        extractor = feats.ClassifierExtractor(feats.cached_classifier(data, cfg.data))
        f_test, _ = extractor.embed(first_images(data.test, 1000))
        for name in scorers:
            score, epoch, path = min(scores[name], key=lambda s: s[0])
            load_checkpoint_into(model, path)
            f_fake, _ = extractor.embed(generate(model, 1000, 0, data.num_classes)[0])
            pr = sm.precision_recall(f_test, f_fake, k=3)
            lines.append(f"| {run_path.name} | {name} | {epoch} | {score:.1f} | {sm.fid(f_test, f_fake):.1f} | "
                         f"{pr['precision']:.2f} | {pr['recall']:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
