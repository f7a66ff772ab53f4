"""Loss terms shared by the models, computed in float32.

The likelihood and image terms return one value per image, shape (B,): reducing over the batch is left to the
caller, so the same terms serve training (mean over the batch), the ELBO (per image) and the importance-weighted
bound (per importance sample). The GAN losses at the end are batch means (scalars), named after the objective:
non-saturating (Goodfellow et al. 2014), Wasserstein (Arjovsky et al. 2017; with ``gradient_penalty``, WGAN-GP)
and hinge (Lim & Ye 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum(1 + log s^2 - mu^2 - s^2) over latent dims. (B, D) -> (B,)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def unbiased_mmd2(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 from kernel matrices (Gretton et al. 2012, eq. 3): kxx (N, N), kyy (M, M), kxy (N, M). Scalar.

    The diagonals (each point with itself) are left out of the within-set means."""
    n, m = kxx.shape[0], kyy.shape[0]
    return (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) \
        - 2 * kxy.mean()


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log Bernoulli(x | sigmoid(logits)) summed over pixels (binary cross-entropy). (B, C, H, W) -> (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    return bce.flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, logvar: torch.Tensor | float) -> torch.Tensor:
    """-log N(x | mean, exp(logvar)) summed over pixels, constants included. (B, C, H, W) -> (B,).

    With a fixed variance s^2 this is sum((x - mean)^2) / (2 s^2) + const; s^2 = 1/2 gives the plain sum of
    squared errors used by the WSS18 model.
    """
    logvar = torch.as_tensor(logvar, dtype=torch.float32, device=x.device)
    sq = (x.float() - mean.float()).pow(2)
    return 0.5 * (sq * torch.exp(-logvar) + logvar + LOG_2PI).flatten(1).sum(1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mu, exp(logvar)) summed over the last dim. (..., D) -> (...)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, I) summed over the last dim. (..., D) -> (...)."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def ssim_loss(x_hat: torch.Tensor, x: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - SSIM(x_hat, x) per image with a Gaussian window, data range 1 (torchmetrics). (B, C, H, W) -> (B,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    ssim = structural_similarity_index_measure(
        x_hat.float(), x.float(), gaussian_kernel=True, sigma=sigma, kernel_size=window, data_range=1.0, reduction="none"
    )
    return 1.0 - ssim


def colour_loss(x_hat: torch.Tensor, x: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """MSE between adaptive-average-pooled grid x grid versions of x_hat and x, per channel. (B, C, H, W) -> (B,)."""
    pooled_hat = F.adaptive_avg_pool2d(x_hat.float(), grid)
    pooled = F.adaptive_avg_pool2d(x.float(), grid)
    return (pooled_hat - pooled).pow(2).flatten(1).mean(1)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, *critic_args) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): E[(||grad D(x_hat)||_2 - 1)^2], x_hat on random lines real-fake. Scalar."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat, *critic_args)
    (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
    return (grad.float().flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def logit_bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of discriminator logits (B,) against a constant target (1: real, 0: fake), averaged
    over the batch. Scalar."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, target, dtype=torch.float32))


def non_saturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), batch means. Scalar."""
    return logit_bce(real_logits, 1.0) + logit_bce(fake_logits, 0.0)


def non_saturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)), the batch mean (the generator's non-saturating form). Scalar."""
    return logit_bce(fake_logits, 1.0)


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)]: minus the critic's estimate of the Wasserstein distance. Scalar."""
    return fake_scores.float().mean() - real_scores.float().mean()


def wasserstein_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]. Scalar."""
    return -fake_scores.float().mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]. Scalar. (Its generator loss is ``wasserstein_g_loss``.)"""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()
