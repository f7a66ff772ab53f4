"""What training measures and draws at the end of an epoch and of the run, besides the best-weights score."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..accel import Prepared
from ..data import ImageSet, epoch_batches, iterate_batches, spaced_images
from ..grids import originals_over_reconstructions, save_grid


def monitor_likelihood(model, validation: ImageSet, limit: int, prepared: Prepared, seed: int) -> dict | None:
    """The per-epoch monitor: mean validation ELBO (or an SSIM model's loss) over up to ``limit`` validation images
    under the training precision, on raw pixels and, for conditional models, with the true label. Named
    ``monitor_*`` because it is not the evaluation's number (``likelihood`` in summary.json and eval/metrics.json, on
    the test images); None without an encoder or validation images."""
    n = min(limit, len(validation))
    if not model.has_encoder or n == 0:
        return None
    totals = {"elbo": 0.0, "nll": 0.0, "kl": 0.0}
    model.eval()
    with torch.random.fork_rng(devices=[]), prepared.autocast():
        torch.manual_seed(seed)
        for batch in iterate_batches(validation, epoch_batches(n, 500, 0, 0, shuffle=False, drop_last=False),
                                     prepared.device):
            out = model.elbo(batch["x"], batch["y"] if model.is_conditional else None)
            for key in totals:
                totals[key] += float(out[key].sum())
    model.train()
    mean = {k: v / n for k, v in totals.items()}
    if not model.has_likelihood:
        return {"monitor_loss": -mean["elbo"], "monitor_recon": mean["nll"], "monitor_kl": mean["kl"]}
    return {"monitor_elbo": mean["elbo"], "monitor_nll": mean["nll"], "monitor_kl": mean["kl"]}


# test images the end-of-run likelihood reads at most (spread over the split; `vaelab evaluate` reads them all): on a
# 60,000-image folder 10,000 took 82 s of the run's end on 2 cores, and the mean ELBO of 2,000 has a standard error
# of a few nats. On a CPU a costly model reads fewer, down to the floor (vaelab.work_size)
END_OF_RUN_LIKELIHOOD_IMAGES = 2_000
END_OF_RUN_LIKELIHOOD_FLOOR = 250


def held_out_likelihood(model, test: ImageSet, seed: int, limit: int | None = None) -> dict | None:
    """The evaluation's likelihood numbers (``metrics.likelihood.likelihood_metrics``, fp32, K = 0) on up to
    ``limit`` test images spread over the split (None: ``END_OF_RUN_LIKELIHOOD_IMAGES``, fewer for a costly model
    on a CPU; the count is in its settings), read a batch at a time, with a progress line: the same names and
    definitions as ``vaelab evaluate``'s eval/metrics.json."""
    if not model.has_encoder:
        return None
    from ..metrics.likelihood import likelihood_metrics
    from ..work_size import afforded

    if limit is None:
        limit = afforded(END_OF_RUN_LIKELIHOOD_IMAGES, model, END_OF_RUN_LIKELIHOOD_FLOOR)
    try:
        with torch.random.fork_rng(devices=[]):
            return likelihood_metrics(model, test, k=0, seed=seed, progress=False, limit=limit,
                                      what="the held-out likelihood of the test images")
    finally:
        model.train()


def write_grids(model, images: ImageSet, folder: Path, tag: str, n: int, seed: int, device: torch.device) -> None:
    """``<tag>-samples.png`` (n prior samples from the ``grids`` seed stream; for a conditional model whole rows, one
    column per class) and, for models with an encoder, ``<tag>-reconstructions.png`` of 32 images spread over the
    split ``images`` (training: the validation split; none when it is empty)."""
    from ..processes import stream_seed

    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    y, nrow = None, None
    if model.is_conditional:
        k = model.config.num_classes
        n = max(1, math.ceil(n / k)) * k
        y, nrow = (torch.arange(n) % k).to(device), k
    samples = model.sample(n, y=y, generator=torch.Generator().manual_seed(stream_seed("grids", seed)))
    save_grid(samples, folder / f"{tag}-samples.png", nrow=nrow)
    if model.has_encoder and len(images) > 0:
        x, labels = spaced_images(images, 32)  # spread over the split, whose order may follow the classes
        labels = labels.to(device) if labels is not None and model.is_conditional else None
        with torch.inference_mode():
            recon = model.reconstruct(x.to(device), labels)
        grid, per_row = originals_over_reconstructions(x, recon)
        save_grid(grid, folder / f"{tag}-reconstructions.png", nrow=per_row)
    model.train()
