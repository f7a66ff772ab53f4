"""Learning-rate schedules over E epochs (train.lr_schedule_epochs, by default train.epochs), set at the start of each
epoch; after epoch E the rate stays at the schedule's end.

- ``constant``: the optimizers' own rates throughout.
- ``gamma``: Larsen et al.'s code for VAE-GAN (deeppy's GammaAnnealer, epoch-wise):
  lr_e = lr * (1 - (e / E)^lr_gamma * (1 - lr_final_factor)), e the epoch (0-based).
  Their values: 0.02 -> 1e-5 on a batch-summed loss of 64 images (3.1e-4 -> 1.6e-7 on the batch mean; the paper's
  3e-4), lr_gamma 0.75.
- ``cosine``: lr_e = lr * (f + (1 - f) * (1 + cos(pi e / E)) / 2), f = lr_final_factor.

Each optimizer group keeps its base rate as ``initial_lr`` (the key torch's own schedulers use; it travels in the
optimizer's state dict, so a resumed run continues the same curve), and a rollback that lowers the rate lowers the
base too, so the schedule carries the reduction on.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "gamma", "cosine")


def lr_factor(schedule: str, epoch: int, epochs: int, final_factor: float, gamma: float) -> float:
    """The multiple of the base rate in force during ``epoch`` (0-based) of ``epochs``."""
    if schedule == "constant" or epochs <= 0:
        return 1.0
    progress = min(max(epoch / epochs, 0.0), 1.0)
    if schedule == "gamma":
        return 1.0 - progress**gamma * (1.0 - final_factor)
    if schedule == "cosine":
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; one of {', '.join(LR_SCHEDULES)}")


def apply_lr_factor(optimizers: dict, factor: float) -> dict[str, float]:
    """Set every group's rate to ``factor`` times its base rate; returns each optimizer's first rate."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
    return {name: opt.param_groups[0]["lr"] for name, opt in optimizers.items()}
