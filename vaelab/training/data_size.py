"""Presets that carry to a folder of another size: a preset's epochs were measured on its own data, and an epoch of
a small folder is a few optimizer steps. With ``train.reference_train_images`` set (the mnist presets: mnist5k's
3,500 training images), a smaller training split multiplies every epoch-counted setting by the ratio of the
reference's optimizer steps per epoch to its own (whole batches: an epoch drops its ragged last one), so the run
makes the preset's number of optimizer steps, decays its learning rate over the same steps, and scores,
samples and checkpoints as often per step (issue 34: the VAE-GAN's 30 epochs on a 500-image folder were ~200 steps;
its 1,640 steps on ~500 images gave a FID close to the 3,500-image run's with a fitted sampler). A larger split keeps
the preset's epochs (more data, more steps).

Discriminator augmentation is size-aware the same way: a model config with ``augment_below_images`` keeps its
``augment`` policy only for a training split smaller than that (``resolve_augmentation``).
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
    # in optimizer steps, not images: an epoch drops its ragged last batch, so 175 images of batches of 64 make 2
    # steps where an image ratio counts 2.7 (1,200 steps for the preset's 1,620)
    steps = lambda images: max(images // t.batch_size, 1)
    factor = steps(reference) / steps(train_images)
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


def resolve_augmentation(model_cfg, train_images: int) -> dict | None:
    """Decide a size-aware augmentation in place: a model config with ``augment_below_images`` N keeps its
    ``augment`` policy for a training split of fewer than N images and drops it otherwise; N is then cleared, so
    config.yaml holds the decision and a resume or a reload builds the same model. Returns what was decided (for the
    run's log), or None when the config has no such rule."""
    below = getattr(model_cfg, "augment_below_images", None)
    if below is None or not getattr(model_cfg, "augment", ""):
        return None
    policy = model_cfg.augment
    applied = train_images < below
    if not applied:  # the adaptive strength of no augmentation goes too (config.yaml stays a valid config)
        model_cfg.augment = ""
        if getattr(model_cfg, "augment_target", None) is not None:
            model_cfg.augment_target = None
    model_cfg.augment_below_images = None
    return {"augment": policy, "applied": applied, "train_images": train_images, "below_images": below}


def describe_augmentation(decision: dict) -> str:
    """One line for the run's log."""
    verdict = "on" if decision["applied"] else "off"
    why = "fewer" if decision["applied"] else "not fewer"
    return (f"discriminator augmentation ({decision['augment']}) {verdict}: {decision['train_images']} training "
            f"images, {why} than model.augment_below_images={decision['below_images']:,} (measured to help below "
            f"that size, benchmarks/RESULTS.md; --set model.augment_below_images=null keeps model.augment as set)")
