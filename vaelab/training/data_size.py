"""Presets that carry to a folder of another size: a preset's epochs were measured on its own data, and an epoch of
a small folder is a few optimizer steps. With ``train.reference_train_images`` set (the mnist presets: mnist5k's
3,500 training images), a smaller training split multiplies every epoch-counted setting by reference / images, so
the run makes the preset's number of optimizer steps, decays its learning rate over the same steps, and scores,
samples and checkpoints as often per step (issue 34: the VAE-GAN's 30 epochs on a 500-image folder were ~200 steps;
its 1,640 steps on ~500 images gave a FID close to the 3,500-image run's with a fitted sampler). A larger split keeps
the preset's epochs (more data, more steps).
"""

from __future__ import annotations

from ..config import TrainConfig

EPOCH_COUNTED = ("epochs", "lr_schedule_epochs", "best_every_epochs", "sample_every_epochs", "checkpoint_every_epochs")


def scale_to_data_size(t: TrainConfig, train_images: int) -> dict | None:
    """Scale ``t``'s epoch-counted settings in place for a training split of ``train_images`` and return what
    changed (also left in ``t.size_scaling``, with ``t.reference_train_images`` cleared so a resume does not scale
    again); None when nothing scales."""
    reference = t.reference_train_images
    if not reference or train_images >= reference:
        return None
    factor = reference / max(train_images, 1)
    before = {key: getattr(t, key) for key in EPOCH_COUNTED if getattr(t, key)}
    after = {key: max(1, round(value * factor)) for key, value in before.items()}
    for key, value in after.items():
        setattr(t, key, value)
    t.size_scaling = {"reference_train_images": reference, "train_images": train_images, "factor": round(factor, 4),
                      "from": before, "to": after}
    t.reference_train_images = None
    return t.size_scaling


def describe_scaling(scaling: dict) -> str:
    """One line for the run's log."""
    changes = ", ".join(f"{key} {scaling['from'][key]} -> {scaling['to'][key]}" for key in scaling["to"])
    return (f"{scaling['train_images']} training images, {scaling['factor']:.1f}x fewer than the "
            f"{scaling['reference_train_images']:,} the preset was measured on: {changes}, so the run makes the "
            f"preset's optimizer steps (train.size_scaling in config.yaml; `--epochs N` or --set "
            f"train.reference_train_images=null keeps the preset's epochs)")
