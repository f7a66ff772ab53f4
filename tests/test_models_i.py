"""Models I: conditional VAE, SSIM + colour VAE, DCGAN, WGAN-GP, AC-GAN."""

import math

import pytest
import torch

from conftest import built_model, parameters_of
from vaelab.config import load_config
from vaelab.losses import colour_loss, gradient_penalty, ssim_loss
from vaelab.training import UpdateContext, train


ALL_PRESETS = ["cvae-mnist", "cvae-mnist-16", "dcvae-ssim-mnist", "dcvae-ssim-stl10", "dcvae-ssim-cifar10",
               "dcgan-mnist", "wgan-gp-mnist", "acgan-mnist", "dcgan-celeba64", "wgan-gp-cifar10", "acgan-cifar10"]


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_output_shapes_at_each_presets_resolution(preset):
    model = built_model(preset).eval()
    c = model.config
    y = torch.arange(2) % c.num_classes if model.is_conditional else None
    x = model.sample(2, y=y, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, c.channels, c.image_size, c.image_size)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    if model.has_encoder:
        mu, logvar = model.encode(x, y)
        assert mu.shape == (2, c.latent_dim)
        assert model.reconstruct(x, y).shape == x.shape
    else:
        assert not hasattr(model, "encode")


def test_ssim_vae_unpadded_stl10_sizes():
    model = built_model("dcvae-ssim-stl10")
    assert model.encoder.sizes == [96, 47, 22, 10, 4]
    assert model.config.latent_dim == 1024


def test_cvae_conditions_on_the_label():
    model = built_model("cvae-mnist").eval()
    z = torch.zeros(1, 2)
    images = [model.decode(z, torch.tensor([k])) for k in range(3)]
    assert not torch.allclose(images[0], images[1])
    # the label reaches the encoder too
    x = torch.rand(1, 1, 28, 28)
    assert not torch.allclose(model.encode(x, torch.tensor([0]))[0], model.encode(x, torch.tensor([7]))[0])


def test_ssim_and_colour_losses_by_hand():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim_loss(x, x, 7), torch.zeros(2), atol=1e-5)
    assert float(ssim_loss(x, torch.rand(2, 3, 16, 16), 7).min()) > 0.5
    # colour: a constant offset of 0.1 in one channel of 3 -> MSE over 3 x 3 x 3 pooled cells = 0.01 / 3
    shifted = x.clone()
    shifted[:, 1] += 0.1
    assert torch.allclose(colour_loss(shifted, x), torch.full((2,), 0.01 / 3), rtol=1e-4)
    # colour ignores structure that averages out in 3x3 cells
    checker = (torch.arange(12)[:, None] + torch.arange(12)[None]) % 2
    a = checker.float().expand(1, 1, 12, 12)
    assert float(colour_loss(a, torch.full_like(a, 0.5))) < 1e-10


def test_gradient_penalty_matches_linear_critic_analytically():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    # D(x) = w.x + b has gradient w everywhere: penalty = (||w|| - 1)^2
    expected = (critic[1].weight.norm() - 1) ** 2
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dcgan_losses_by_hand():
    model = built_model("dcgan-mnist")
    model.discriminator.forward = lambda x: x.flatten(1).mean(1)  # a fixed "logit" per image
    real, fake = torch.full((2, 1, 28, 28), 2.0), torch.full((2, 1, 28, 28), -1.0)
    d = model.discriminator_loss(real, fake, None, None)
    expected = -math.log(1 / (1 + math.exp(-2))) - math.log(1 - 1 / (1 + math.exp(1)))
    assert d["d_loss"].item() == pytest.approx(expected, rel=1e-6)
    g = model.generator_loss(fake, None)
    assert g["g_loss"].item() == pytest.approx(-math.log(1 / (1 + math.exp(1))), rel=1e-6)


def test_wgan_losses_by_hand():
    model = built_model("wgan-gp-mnist")
    model.discriminator.forward = lambda x: 3 * x.flatten(1).sum(1)  # linear critic, ||grad|| = 3
    real, fake = torch.full((2, 1, 28, 28), 0.5), torch.zeros(2, 1, 28, 28)
    d = model.discriminator_loss(real, fake, None, None)
    w = 3 * 0.5 * 784
    grad_norm = 3 * 28  # sqrt(784 * 9)
    assert d["wasserstein"].item() == pytest.approx(w, rel=1e-6)
    assert d["d_loss"].item() == pytest.approx(-w + 10 * (grad_norm - 1) ** 2, rel=1e-5)
    assert model.generator_loss(real, None)["g_loss"].item() == pytest.approx(-w, rel=1e-6)
    assert [model.generator_updates_at(s) for s in range(10)] == [False] * 4 + [True] + [False] * 4 + [True]


@pytest.mark.parametrize("classify_fakes", [True, False])
def test_acgan_losses_by_hand(classify_fakes):
    """The paper's form (the class head learns real and fake classes, weight 1) and the mnist5k preset's (real
    images only, weight 10)."""
    weight = 1.0 if classify_fakes else 10.0
    model = built_model("acgan-mnist", **{"model.classify_fakes": str(classify_fakes).lower(), "model.class_weight": weight})
    s_logit = torch.tensor([0.0, 1.0])
    c_logits = torch.tensor([[2.0] + [0.0] * 9, [0.0] * 10])
    model.discriminator.both = lambda x: (s_logit, c_logits)
    y = torch.tensor([0, 3])
    d = model.discriminator_loss(torch.zeros(2), torch.zeros(2), y, y)
    bce_real = (math.log(2) + math.log(1 + math.exp(-1))) / 2
    bce_fake = (math.log(2) + math.log(1 + math.exp(1))) / 2
    ce = (-(2 - math.log(math.exp(2) + 9)) + math.log(10)) / 2
    assert d["d_source"].item() == pytest.approx(bce_real + bce_fake, rel=1e-6)
    assert d["d_class"].item() == pytest.approx((2 if classify_fakes else 1) * ce, rel=1e-6)
    assert d["d_loss"].item() == pytest.approx(bce_real + bce_fake + weight * d["d_class"].item(), rel=1e-6)
    g = model.generator_loss(torch.zeros(2), y)
    assert g["g_loss"].item() == pytest.approx(bce_real + weight * ce, rel=1e-6)


@pytest.mark.parametrize("preset", ["dcgan-mnist", "wgan-gp-mnist", "acgan-mnist"])
def test_each_update_touches_only_its_own_network(preset):
    torch.manual_seed(0)
    model = built_model(preset)
    optimizers = model.configure_optimizers()
    ctx = UpdateContext(optimizers, {}, 1, None, "cpu")
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    y = torch.randint(10, (8,)) if model.is_conditional else None
    fake = model.generate(torch.randn(8, model.config.latent_dim), y)

    g_before, d_before = parameters_of(model.generator), parameters_of(model.discriminator)
    d = model.discriminator_loss(real, fake.detach(), y, y)
    ctx.update(d["d_loss"], "discriminator")
    assert all(torch.equal(a, b) for a, b in zip(g_before, parameters_of(model.generator)))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, parameters_of(model.discriminator)))

    g_before, d_before = parameters_of(model.generator), parameters_of(model.discriminator)
    g = model.generator_loss(fake, y)
    ctx.update(g["g_loss"], "generator")
    assert all(torch.equal(a, b) for a, b in zip(d_before, parameters_of(model.discriminator)))
    assert not all(torch.equal(a, b) for a, b in zip(g_before, parameters_of(model.generator)))


@pytest.mark.parametrize("preset", ["cvae-mnist", "dcvae-ssim-mnist", "dcgan-mnist", "wgan-gp-mnist", "acgan-mnist"])
def test_short_mnist5k_run_has_finite_losses(preset, tmp_path):
    cfg = load_config(preset=preset, overrides=[
        "train.epochs=1", "train.max_steps=6", "train.batch_size=32", "train.log_every=2",
        "train.num_sample_images=20", "train.trackers=[]", "train.eval_images=64"])
    summary = train(cfg, tmp_path / "r", progress=False)
    rows = [r for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 3
    import json

    for row in map(json.loads, rows):
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert (tmp_path / "r" / "samples/step-00000006-samples.png").is_file()
    if preset in ("cvae-mnist", "dcvae-ssim-mnist"):
        assert (tmp_path / "r" / "samples/step-00000006-reconstructions.png").is_file()
        key = "elbo_nats" if preset == "cvae-mnist" else "reconstruction_loss"
        assert math.isfinite(summary["likelihood"][key])
