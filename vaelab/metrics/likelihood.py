"""Likelihood-side metrics for models with an encoder: ELBO, IWAE log-likelihood, reconstruction error, KL."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Dynamic binarization with a fixed seed: pixel ~ Bernoulli(intensity) (the binarized-MNIST protocol)."""
    return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))


@torch.no_grad()
def likelihood_metrics(model, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1000, batch_size: int = 100,
                       binarized: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """ELBO, the importance-weighted bound with ``k`` samples, reconstruction error and KL over images ``x``.

    x: float (N, C, H, W) in [0, 1]. Log-likelihoods are in nats per image and bits per dimension. Models whose
    reconstruction term is not a normalised likelihood (``has_likelihood`` False) get reconstruction and KL only.
    """
    model.eval()
    device = model.device
    dims = math.prod(x.shape[1:])
    if binarized:
        x = binarize(x, seed)
    cond = y if model.is_conditional else None
    totals = {"elbo": 0.0, "nll": 0.0, "kl": 0.0, "mse": 0.0, "iwae": 0.0}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = tqdm(total=len(x), desc=f"likelihood (K={k})", disable=not progress, unit="img")
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            yb = None if cond is None else cond[i : i + batch_size].to(device)
            out = model.elbo(xb, yb)
            for key in ("elbo", "nll", "kl"):
                totals[key] += float(out[key].sum())
            totals["mse"] += float((model.reconstruct(xb, yb).float() - xb).pow(2).flatten(1).mean(1).sum())
            if model.has_likelihood and k > 0:
                totals["iwae"] += float(model.log_likelihood(xb, k, yb).sum())
            bar.update(len(xb))
        bar.close()
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
