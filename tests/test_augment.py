"""DiffAugment (vaelab/augment.py): differentiable, the same transform for an image's copies, applied by the
discriminators to real and generated images alike; its adaptive strength (Karras et al. 2020) rises on a
discriminator that overfits and survives a resume exactly (two processes agreeing: test_distributed.py)."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import built_model, tiny_overrides
from vaelab.augment import AdaptiveProbability, diff_augment
from vaelab.config import load_config
from vaelab.errors import ConfigError
from vaelab.run import RunFolder
from vaelab.training import UpdateContext, train

TINY_VAEGAN = {"model.widths": "[8, 16]", "model.discriminator_widths": "[8, 16]", "model.latent_dim": "4"}


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
    plain = built_model(preset)  # the measurements behind each preset's choice are in RESULTS.md, "Small folders"
    if preset == "vaegan-mnist":
        assert plain.config.augment == "translation" and plain.config.augment_below_images == 1000
    else:
        assert plain.config.augment == ""


@pytest.mark.parametrize("preset", ["dcgan-mnist", "wgan-gp-mnist", "acgan-mnist", "avae-khan-mnist",
                                    "began-star-mnist"])
def test_every_other_discriminator_sees_real_and_generated_images_transformed(preset):
    """The GAN baselines (in their training step, where real and fake reach the discriminator) and the BEGAN family
    (whose discriminator auto-encodes what it sees, so its targets are the transformed images too)."""
    torch.manual_seed(0)
    model = built_model(preset, **{"model.augment": "cutout"})
    seen = []
    began = preset in ("avae-khan-mnist", "began-star-mnist")
    network = model.discriminator if began else model.discriminator.features  # AC-GAN's heads share the features
    network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.rand(4, 1, 28, 28) * 0.5 + 0.5  # no zero pixel, on either scale: a cutout shows as a 14 x 14 zero square
    if began:
        t = model.losses(x)
        real_seen = seen[0][: len(x)]
        with torch.no_grad():  # L_d: how well D auto-encodes the real images as it saw them, transformed
            assert t["L_d"].item() == pytest.approx(float((real_seen - model.discriminator(real_seen)[1]).abs().mean()),
                                                    rel=1e-5)
    else:
        ctx = UpdateContext(model.configure_optimizers(), {}, 1, None, "cpu")
        model.training_step({"x": x, "y": torch.arange(4)}, ctx)
    images = torch.cat(seen)[: 2 * len(x)]  # the real images and the first generated ones
    assert images.eq(0).flatten(1).sum(1).eq(14 * 14).all()
    assert built_model(preset).config.augment == ""  # a switch on these: not measured


def test_the_adaptive_probability_follows_the_sign_of_r_t_minus_the_target():
    ada = AdaptiveProbability(target=0.6, speed_images=1000, interval=4)
    assert [ada.observe(1.0, 50) for _ in range(4)] == [0.0, 0.0, 0.0, 0.2]  # 200 images of 1,000 after 4 steps
    for _ in range(12):
        ada.observe(0.9, 50)
    assert ada.p == pytest.approx(0.8)
    for _ in range(40):
        ada.observe(1.0, 50)
    assert ada.p == 1.0  # clipped
    for _ in range(8):
        ada.observe(0.2, 50)  # below the target: falls
    assert ada.p == pytest.approx(0.6)
    for _ in range(4):
        ada.observe(0.6, 50)  # at the target: holds
    assert ada.p == pytest.approx(0.6)
    half = AdaptiveProbability(0.6, 1000)
    half.observe(1.0, 50), half.observe(1.0, 50)
    again = AdaptiveProbability(0.6, 1000)
    again.load(half.state())  # a partial interval carries over
    assert [again.observe(1.0, 50) for _ in range(2)] == [0.0, 0.2]


def _overfit(discriminator_lr: float, steps: int = 60):
    """A tiny VAE-GAN stepped on the same 16 digits: the discriminator learns them (r_t -> 1) unless it cannot
    learn at all (lr 0: r_t stays where its initial weights put it)."""
    torch.manual_seed(0)
    sets = {**TINY_VAEGAN, "model.augment": "translation", "model.augment_target": 0.6,
            "model.augment_speed_images": 1000}
    model = built_model("vaegan-mnist", **sets)
    optimizers = model.configure_optimizers()
    for group in optimizers["discriminator"].param_groups:
        group["lr"] = discriminator_lr
    ctx = UpdateContext(optimizers, {}, 1, None, "cpu")
    x = torch.rand(16, 1, 28, 28).round()  # 16 fixed binary "images"
    ps, signs = [], []
    for _ in range(steps):
        out = model.training_step({"x": x, "y": None}, ctx)
        ps.append(float(out["augment_p"]))
        signs.append(float(model.losses(x)["d_real_sign"]))
    return ps, signs


def test_the_adaptive_probability_rises_on_a_discriminator_made_to_overfit():
    ps, signs = _overfit(discriminator_lr=1e-3)
    assert sum(signs[-20:]) / 20 > 0.6  # it calls its 16 training images real
    assert ps == sorted(ps) and ps[-1] >= 0.8, ps  # so p rose, at 64 images of 1,000 every 4 steps
    frozen, frozen_signs = _overfit(discriminator_lr=0.0, steps=24)  # one that cannot learn them: r_t stays low
    assert sum(frozen_signs) / 24 < 0.6 and max(frozen) == 0.0


def test_the_adaptive_probability_is_exact_across_a_resume(tmp_path):
    sets = {**TINY_VAEGAN, "model.augment": "translation", "model.augment_below_images": "null",
            "model.augment_target": -0.5,
            "model.augment_speed_images": 2000, "train.track_best": "false", "train.batch_size": 32,
            "train.trackers": "[]", "train.eval_images": 64, "train.epochs": 1}
    config = lambda steps: load_config(preset="vaegan-mnist", overrides=tiny_overrides(
        vae=False, **sets, **{"train.max_steps": steps}))
    train(config(10), tmp_path / "straight", progress=False)
    train(config(5), tmp_path / "split", progress=False)
    half = RunFolder(tmp_path / "split").load_checkpoint()["extra"]["augment"]
    assert half["steps"] == 1 and 0 < half["p"] < 1  # mid-interval, p moved (a target below any r_t: it rises)
    train(config(10), tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    states = [RunFolder(p).load_checkpoint()["extra"]["augment"] for p in (tmp_path / "straight", tmp_path / "split")]
    assert states[0] == states[1] and states[0]["p"] > half["p"]


def test_an_adaptive_strength_needs_a_policy_and_a_target_in_range():
    with pytest.raises(ConfigError, match="model.augment_target adapts"):
        built_model("vaegan-mnist", **{"model.augment": "", "model.augment_target": 0.6})
    with pytest.raises(ConfigError, match="in \\(-1, 1\\)"):
        built_model("vaegan-mnist", **{"model.augment": "translation", "model.augment_target": 1.5})
