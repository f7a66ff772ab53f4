"""DiffAugment (vaelab/augment.py): differentiable, the same transform for an image's copies, applied by the
discriminators to real and generated images alike."""

import pytest
import torch

from conftest import built_model
from vaelab.augment import diff_augment
from vaelab.errors import ConfigError


def test_translation_moves_the_image_and_cutout_zeroes_a_half_side_square():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    moved = diff_augment(x, "translation")
    where = moved.flatten(1).argmax(1)
    dy, dx = where // 16 - 8, where % 16 - 8
    assert moved.flatten(1).sum(1).eq(1).all()  # a shift of at most 2 px keeps the pixel inside
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(zip(dy.tolist(), dx.tolist()))) > 10
    holes = diff_augment(torch.ones(32, 3, 16, 16), "cutout")
    assert holes.eq(0).flatten(1).sum(1).eq(3 * 8 * 8).all()  # an 8x8 square in every channel


def test_the_transforms_are_differentiable_and_copies_of_an_image_move_together():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    out = diff_augment(x, "color,translation,cutout")
    (out * torch.rand_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    pair = torch.rand(8, 1, 16, 16)
    real, copy = diff_augment(torch.cat([pair, pair]), "translation,cutout", pairs=2).chunk(2)
    assert torch.equal(real, copy) and not torch.equal(real, pair)
    assert torch.equal(diff_augment(pair, "translation", probability=0.0), pair)
    some = diff_augment(pair.repeat(50, 1, 1, 1), "cutout", probability=0.5)
    untouched = (some == pair.repeat(50, 1, 1, 1)).flatten(1).all(1).double().mean()
    assert 0.35 < untouched < 0.65
    with pytest.raises(ConfigError, match="rotation is not a transform"):
        diff_augment(pair, "translation,rotation")


@pytest.mark.parametrize("preset,network", [("vaegan-mnist", "discriminator"), ("gvae-sagar-mnist", "critic")])
def test_the_discriminator_sees_real_and_generated_images_transformed(preset, network):
    torch.manual_seed(0)
    model = built_model(preset, **{"model.augment": "cutout"})
    seen = []
    getattr(model, network).register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.rand(4, 1, 28, 28) * 0.5 + 0.5  # no zero pixel: a cutout shows as an exact 14 x 14 zero square
    if preset == "vaegan-mnist":
        model.losses(x)
    else:
        model.critic_loss(x, torch.rand_like(x) * 0.5 + 0.5, torch.rand_like(x) * 0.5 + 0.5)
    images = torch.cat(seen)[: 3 * len(x)]  # the real, reconstructed and prior images of the first passes
    assert images.eq(0).flatten(1).sum(1).eq(14 * 14).all()
    plain = built_model(preset)
    assert plain.config.augment == ""  # off unless asked: the switch's measurement is in RESULTS.md
