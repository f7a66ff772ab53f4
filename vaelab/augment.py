"""Differentiable augmentation of every image a discriminator sees, real and generated alike (DiffAugment: Zhao et
al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS, sec. 3 and its released policy).

On a few hundred images a discriminator memorises the real ones and its gradients stop telling the generator
anything; transforming both the real and the generated images (and differentiably, so the generator's gradient
passes through the transform) keeps it from memorising without teaching the generator the transforms, since real
and fake are transformed alike. The policy names the transforms, applied in this order:

- ``color``: brightness + U(-0.5, 0.5), saturation x U(0, 2) about the pixel's channel mean, contrast x U(0.5, 1.5)
  about the image mean (DiffAugment's ``rand_brightness``, ``rand_saturation``, ``rand_contrast``);
- ``translation``: an integer shift of up to ``TRANSLATION`` of the side, zeros shifted in;
- ``cutout``: a zeroed square of ``CUTOUT`` of the side at a random place.

``probability`` applies the whole policy to each image with that probability (1: DiffAugment; below 1: the
strength p of Karras et al. 2020's adaptive augmentation, fixed, or set by ``AdaptiveProbability``, its
controller). ``pairs`` > 1 treats the batch as that many stacked copies of one set of images (VAE-GAN's real images
and their reconstructions, compared feature by feature): every copy of an image gets the same transform, so the
comparison stays like with like.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

TRANSFORMS = ("color", "translation", "cutout")
TRANSLATION = 0.125  # DiffAugment's ratio: up to 1/8 of the side
CUTOUT = 0.5  # DiffAugment's ratio: a square half the side


def parse_policy(policy: str) -> list[str]:
    """'translation,cutout' -> ['translation', 'cutout'] ('' -> []), or a ConfigError naming the unknown one."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ConfigError(f"model.augment: {', '.join(unknown)} is not a transform; the transforms are "
                          f"{', '.join(TRANSFORMS)} (comma-separated, e.g. translation,cutout; empty: none)")
    return names


def validate_augment(cfg) -> None:
    """The checks of the settings every model with a discriminator or critic carries in its config: ``augment`` (a
    policy) and ``augment_below_images`` (vaelab/training/data_size.py)."""
    parse_policy(cfg.augment)
    if cfg.augment_below_images is not None and cfg.augment_below_images < 1:
        raise ConfigError(f"model.augment_below_images must be >= 1 (or null), got {cfg.augment_below_images}")


def as_configured(images: torch.Tensor, cfg, pairs: int = 1) -> torch.Tensor:
    """``images`` as a model's discriminator sees them: transformed by ``cfg.augment`` (unchanged where it is empty)."""
    return diff_augment(images, cfg.augment, 1.0, pairs) if cfg.augment else images


def diff_augment(x: torch.Tensor, policy: str, probability: float = 1.0, pairs: int = 1) -> torch.Tensor:
    """x (pairs * B, C, H, W) in [0, 1] -> the same shape, each image transformed by ``policy`` (see the module
    docstring); differentiable in x. Random numbers come from torch's global generator."""
    names = parse_policy(policy)
    if not names or probability <= 0:
        return x
    n, c, h, w = x.shape
    b = n // pairs

    def per_image(*shape):  # one draw per image, shared by its copies
        return torch.rand(b, *shape, device=x.device).repeat(pairs, *([1] * len(shape)))

    out = x
    if "color" in names:
        out = out + (per_image(1, 1, 1) - 0.5)
        mean = out.mean(1, keepdim=True)
        out = (out - mean) * (per_image(1, 1, 1) * 2) + mean
        mean = out.mean((1, 2, 3), keepdim=True)
        out = (out - mean) * (per_image(1, 1, 1) + 0.5) + mean
    if "translation" in names:
        shift_h, shift_w = int(h * TRANSLATION + 0.5), int(w * TRANSLATION + 0.5)
        dy = (per_image() * (2 * shift_h + 1)).long() - shift_h
        dx = (per_image() * (2 * shift_w + 1)).long() - shift_w
        rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (N, H): the source row of each row
        cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]
        inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        gathered = out.gather(2, rows[:, None, :, None].expand(n, c, h, w))
        gathered = gathered.gather(3, cols[:, None, None, :].expand(n, c, h, w))
        out = gathered * inside
    if "cutout" in names:
        size_h, size_w = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
        top = (per_image() * (h + 1 - size_h)).long()
        left = (per_image() * (w + 1 - size_w)).long()
        r = torch.arange(h, device=x.device)[None, :]
        q = torch.arange(w, device=x.device)[None, :]
        hole = ((r >= top[:, None]) & (r < top[:, None] + size_h))[:, None, :, None] & \
               ((q >= left[:, None]) & (q < left[:, None] + size_w))[:, None, None, :]
        out = out * ~hole
    if probability < 1:
        keep = (per_image(1, 1, 1) < probability).to(out.dtype)
        out = keep * out + (1 - keep) * x
    return out


class AdaptiveProbability:
    """The strength p of the augmentation, set from an overfitting signal (Karras et al. 2020, "Training Generative
    Adversarial Networks with Limited Data", sec. 3): r_t = E[sign(D(x))] over the real training images the
    discriminator saw in the last ``interval`` steps (its raw logit: > 0 says "real"); every ``interval`` steps
    p <- clip(p + sign(r_t - target) * images / speed_images, 0, 1), ``images`` the real images of those steps, so p
    can cross [0, 1] in ``speed_images`` images. A discriminator that has learned its training images calls nearly
    all of them real (r_t -> 1) and p rises; one that cannot tell them apart keeps r_t near 0 and p falls.

    The paper's speed is 500k images for runs of ~25M; this scales it to vaelab's small-folder runs of ~100k images
    (``speed_images``, a model setting). Every process must pass the same r (the mean over processes) so all move p
    alike; ``state()`` / ``load()`` carry p and the partial interval across a resume."""

    def __init__(self, target: float, speed_images: int, interval: int = 4, p: float = 0.0):
        self.target, self.speed_images, self.interval = target, speed_images, interval
        self.p, self.signs, self.images, self.steps = p, 0.0, 0, 0

    def observe(self, mean_sign: float, images: int) -> float:
        """One step's mean sign of D on its ``images`` real images (the mean over processes: each process passes
        the same value and its global batch) -> p for the next step."""
        self.signs += mean_sign * images
        self.images += images
        self.steps += 1
        if self.steps >= self.interval:
            r_t = self.signs / max(self.images, 1)
            direction = (r_t > self.target) - (r_t < self.target)
            self.p = min(1.0, max(0.0, self.p + direction * self.images / self.speed_images))
            self.signs, self.images, self.steps = 0.0, 0, 0
        return self.p

    def state(self) -> dict:
        return {"p": self.p, "signs": self.signs, "images": self.images, "steps": self.steps}

    def load(self, state: dict) -> None:
        self.p, self.signs, self.images, self.steps = (state["p"], state["signs"], state["images"], state["steps"])


__all__ = ["AdaptiveProbability", "TRANSFORMS", "as_configured", "diff_augment", "parse_policy", "validate_augment"]
