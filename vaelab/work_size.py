"""How many images the work after training affords: counts sized by the model's cost per image on a CPU.

The counts the end of a run uses (2,000 test images for the likelihood, 20,000 training codes for the sampler fit,
its candidates' draws) were set on models that cost 0.02-0.7 GFLOP an image (encoder and decoder; the 28-96 px
presets). The 128 px GVAE's generator alone costs 17.8 GFLOP an image and the 128 px AVAE's encoder 8.5 (counted
by ``torch.utils.flop_counter``), and with the same counts the end of a 10-step 128 px run kept a 2-core CPU busy
for more than 10 minutes. On a CPU a count is therefore scaled by ``REFERENCE_GFLOP`` over the model's cost, never
below its floor, and the count used is recorded beside the result; on an accelerator the counts stand. The cost is
counted, not timed, so a run makes the same choices on every CPU.
"""

from __future__ import annotations

import torch

REFERENCE_GFLOP = 1.0  # an image's encode + decode cost the counts were set for


@torch.no_grad()
def image_gflop(model) -> float:
    """GFLOP of one image through the model's encoder (where it has one) and decoder: counted once per model."""
    cached = getattr(model, "_image_gflop", None)
    if cached is not None:
        return cached
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    c, s = model.config.channels, model.config.image_size
    y = torch.zeros(1, dtype=torch.long, device=model.device) if model.is_conditional else None
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        if model.has_encoder:
            model.encode(torch.zeros(1, c, s, s, device=model.device), y)
        model.decode(torch.zeros(1, model.config.latent_dim, device=model.device), y)
    model.train(was_training)
    model._image_gflop = counter.get_total_flops() / 1e9
    return model._image_gflop


def afforded(count: int, model, floor: int) -> int:
    """``count`` images of work for this model on its device: scaled down on a CPU by the model's cost over
    ``REFERENCE_GFLOP``, never below ``floor`` (nor above ``count``)."""
    if model.device.type != "cpu":
        return count
    scale = min(1.0, REFERENCE_GFLOP / max(image_gflop(model), 1e-9))
    return max(min(count, floor), round(count * scale))


def is_costly(model) -> bool:
    """Whether the work after training is cut down for this model (a CPU and a cost above ``REFERENCE_GFLOP``); a
    stand-in without a model's config (a test's) is not."""
    if getattr(model, "config", None) is None or not hasattr(model, "decode"):
        return False
    return model.device.type == "cpu" and image_gflop(model) > REFERENCE_GFLOP
