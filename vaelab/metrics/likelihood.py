"""Likelihood-side metrics for models with an encoder: ELBO, IWAE log-likelihood, reconstruction error, KL."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ..processes import chunk_seed, is_main_process, map_chunks


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Dynamic binarization with a fixed seed: pixel ~ Bernoulli(intensity) (the binarized-MNIST protocol)."""
    return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))


@torch.no_grad()
def likelihood_metrics(model, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1000, batch_size: int = 100,
                       binarized: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """ELBO, the importance-weighted bound with ``k`` samples, reconstruction error and KL over images ``x``.

    Under torchrun the batches are split across the processes and their sums gathered; every process returns
    the same result, equal to a one-process run (each batch's noise is seeded by its index).

    x: float (N, C, H, W) in [0, 1]. Log-likelihoods are in nats per image and bits per dimension. Models whose
    reconstruction term is not a normalised likelihood (``has_likelihood`` False) get reconstruction and KL only.
    """
    model.eval()
    device = model.device
    dims = math.prod(x.shape[1:])
    if binarized:
        x = binarize(x, seed)
    cond = y if model.is_conditional else None
    start = time.perf_counter()
    count = math.ceil(len(x) / batch_size)
    bar = tqdm(total=count, desc=f"likelihood (K={k})", disable=not (progress and is_main_process()), unit="batch")

    def batch_sums(i: int) -> dict[str, float]:  # seeded by batch: the same numbers on any number of processes
        xb = x[i * batch_size : (i + 1) * batch_size].to(device)
        yb = None if cond is None else cond[i * batch_size : (i + 1) * batch_size].to(device)
        torch.manual_seed(chunk_seed(seed, i))
        out = model.elbo(xb, yb)
        sums = {key: float(out[key].sum()) for key in ("elbo", "nll", "kl")}
        sums["mse"] = float((model.reconstruct(xb, yb).float() - xb).pow(2).flatten(1).mean(1).sum())
        if model.has_likelihood and k > 0:
            sums["iwae"] = float(model.log_likelihood(xb, k, yb).sum())
        bar.update(1)
        return sums

    with torch.random.fork_rng(devices=[]):
        per_batch = map_chunks(batch_sums, count)  # on several processes: each its share, gathered
    bar.close()
    totals = {key: sum(b.get(key, 0.0) for b in per_batch) for key in ("elbo", "nll", "kl", "mse", "iwae")}
    n = len(x)
    mean = {key: value / n for key, value in totals.items()}
    per_bpd = lambda nats: -nats / (dims * math.log(2))
    result = {
        "settings": {"images": n, "importance_samples": k, "binarized": binarized, "seed": seed,
                     "likelihood": getattr(model.config, "likelihood", "n/a"), "dimensions": dims},
        "reconstruction_mse_per_pixel": mean["mse"],
        "kl_nats": mean["kl"],
        "seconds": time.perf_counter() - start,
    }
    if model.has_likelihood:
        result.update({
            "elbo_nats": mean["elbo"], "elbo_bits_per_dim": per_bpd(mean["elbo"]),
            "reconstruction_nll_nats": mean["nll"],
        })
        if k > 0:
            result.update({"iwae_nats": mean["iwae"], "iwae_bits_per_dim": per_bpd(mean["iwae"])})
    else:
        result["reconstruction_loss"] = mean["nll"]
        result["note"] = "this model's reconstruction term is not a normalised likelihood: no ELBO or IWAE"
    return result
