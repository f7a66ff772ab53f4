"""Likelihood-side metrics for models with an encoder: ELBO, IWAE log-likelihood, reconstruction error, KL."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
from ..progress import Phase
from ..processes import is_main_process, map_chunks, stream_seed


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Dynamic binarization with a fixed seed: pixel ~ Bernoulli(intensity) (the binarized-MNIST protocol)."""
    return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))


LEVELS = 256  # 8-bit images


def dequantize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform dequantisation of 8-bit images x (N, C, H, W), values k/255: (k + u) / 256 with u ~ U[0, 1), a point
    in the pixel's bin of [0, 1]. A density p on [0, 1]^D then bounds the probability of the 8-bit image:
    log P(k) >= E_u log p((k + u) / 256) - D log 256 (Theis et al. 2016), so a uniform density gives 8 bits/dim."""
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device, x.dtype)
    return ((x * (LEVELS - 1)).round() + u) / LEVELS


def marginal_over_classes(model, x: torch.Tensor, k: int, classes: int) -> dict[str, float]:
    """Sums over the batch x (B, C, H, W) of log p(x) = log (1/K) sum_y p(x|y) for a conditional model, bounded by
    its ELBO (``elbo_marginal``) and, with k > 0, its IWAE estimate (``iwae_marginal``) under every class y.
    Each is a lower bound of log p(x) because each per-class term bounds log p(x|y)."""
    out = {}
    labels = [torch.full((len(x),), c, dtype=torch.long, device=x.device) for c in range(classes)]
    per_class = torch.stack([model.elbo(x, y)["elbo"].double() for y in labels], 1)
    out["elbo_marginal"] = float((per_class.logsumexp(1) - math.log(classes)).sum())
    if k > 0:
        per_class = torch.stack([model.log_likelihood(x, k, y).double() for y in labels], 1)
        out["iwae_marginal"] = float((per_class.logsumexp(1) - math.log(classes)).sum())
    return out


@torch.no_grad()
def likelihood_metrics(model, x, y: torch.Tensor | None = None, k: int = 1000, batch_size: int = 100,
                       binarized: bool = False, seed: int = 0, progress: bool = True, limit: int | None = None,
                       what: str | None = None) -> dict:
    """ELBO, the importance-weighted bound with ``k`` samples, reconstruction error and KL over images ``x``.

    Under torchrun the batches are split across the processes and their sums gathered; every process returns
    the same result, equal to a one-process run (each batch's noise is seeded by its index).

    x: float (N, C, H, W) in [0, 1], or a split (``data.ImageSet``: uint8, read a batch at a time, its own labels;
    ``limit`` caps the images, spread over it). ``what``: the progress line's name (None: ``likelihood (K=k)``; the
    lines are printed on the main process with or without ``progress``, which adds the bar). Each batch is binarized or dequantised with its own seed. Log-
    likelihoods are in nats per image and bits per dimension. Models whose reconstruction term is not a normalised
    likelihood (``has_likelihood`` False) get reconstruction and KL only.
    """
    from ..data import ImageSet, spaced_indices

    model.eval()
    device = model.device
    if isinstance(x, ImageSet):
        rows = spaced_indices(len(x), limit or len(x))
        split, y = x, (None if x.labels is None else x.labels[rows])
        read = lambda a, b: split.take(rows[a:b]).float() / 255.0
        n, shape = len(rows), split.take(rows[:1]).shape[1:]
    else:
        x = x[:limit] if limit else x
        read = lambda a, b: x[a:b]
        n, shape = len(x), x.shape[1:]
    dims = math.prod(shape)
    family = getattr(model.config, "likelihood", "n/a")
    # a density on [0, 1]^D (the Gaussian decoder) is measured on dequantised pixels, with the log 256 per dimension
    # that turns it into a bound on the probability of the 8-bit image; otherwise bits/dim are not comparable
    continuous = model.has_likelihood and family == "gaussian" and not binarized
    cond = y if model.is_conditional else None
    classes = getattr(model.config, "num_classes", None) or 0
    start = time.perf_counter()
    count = math.ceil(n / batch_size)
    phase = (Phase(what or f"likelihood (K={k})", n, bar=progress) if is_main_process() else nullcontext())

    def batch_sums(i: int) -> dict[str, float]:  # seeded by batch: the same numbers on any number of processes
        xb = read(i * batch_size, (i + 1) * batch_size)
        noise = stream_seed("pixel_noise", seed, i)
        xb = (binarize(xb, noise) if binarized else dequantize(xb, noise) if continuous else xb).to(device)
        yb = None if cond is None else cond[i * batch_size : (i + 1) * batch_size].to(device)
        torch.manual_seed(stream_seed("likelihood", seed, i))
        out = model.elbo(xb, yb)
        sums = {key: float(out[key].sum()) for key in ("elbo", "nll", "kl")}
        sums["mse"] = float((model.reconstruct(xb, yb).float() - xb).pow(2).flatten(1).mean(1).sum())
        if model.has_likelihood and k > 0:
            sums["iwae"] = float(model.log_likelihood(xb, k, yb).sum())
        if yb is not None and model.has_likelihood:  # log p(x) = log sum_y p(y) p(x|y), p(y) uniform
            sums.update(marginal_over_classes(model, xb, k, classes))
        if progress_line is not None:
            progress_line.advance(len(xb))
        return sums

    with torch.random.fork_rng(devices=[]), phase as progress_line:
        per_batch = map_chunks(batch_sums, count)  # on several processes: each its share, gathered
    totals = {key: sum(b.get(key, 0.0) for b in per_batch)
              for key in ("elbo", "nll", "kl", "mse", "iwae", "elbo_marginal", "iwae_marginal")}
    mean = {key: value / n for key, value in totals.items()}
    if continuous:  # density on [0, 1]^D -> probability of the 8-bit image (see dequantize)
        bin_volume = dims * math.log(LEVELS)
        for key in ("elbo", "iwae", "elbo_marginal", "iwae_marginal"):
            mean[key] -= bin_volume
        mean["nll"] += bin_volume
    conditional = cond is not None and model.has_likelihood
    per_bpd = lambda nats: -nats / (dims * math.log(2))
    result = {
        "settings": {"images": n, "importance_samples": k, "binarized": binarized, "seed": seed,
                     "likelihood": family, "dimensions": dims,
                     "dequantized": "uniform, 256 levels (log 256 per dimension included)" if continuous else "no",
                     "conditioning": (f"log p(x) = log sum_y p(y) p(x|y), p(y) uniform over {classes} classes; "
                                      "conditional_*: log p(x|y) with the true label") if conditional else "log p(x)"},
        "reconstruction_mse_per_pixel": mean["mse"],
        "kl_nats": mean["kl"],
        "seconds": time.perf_counter() - start,
    }
    if model.has_likelihood:
        if conditional:  # the headline numbers are log p(x), comparable with unconditional models
            result["conditional_elbo_nats"] = mean["elbo"]
            mean["elbo"] = mean["elbo_marginal"]
            if k > 0:
                result["conditional_iwae_nats"] = mean["iwae"]
                mean["iwae"] = mean["iwae_marginal"]
        result.update({
            "elbo_nats": mean["elbo"], "elbo_bits_per_dim": per_bpd(mean["elbo"]),
            "reconstruction_nll_nats": mean["nll"],
        })
        if k > 0:
            result.update({"iwae_nats": mean["iwae"], "iwae_bits_per_dim": per_bpd(mean["iwae"])})
        if family == "bernoulli" and not binarized:
            result["normalised"] = False
            result["note"] = ("Bernoulli cross-entropy on grey-level pixels is not a normalised likelihood: these ELBO "
                              "and IWAE numbers bound no log-probability and do not rank models; --binarized does")
    else:
        result["reconstruction_loss"] = mean["nll"]
        result["note"] = "this model's reconstruction term is not a normalised likelihood: no ELBO or IWAE"
    return result
