import math

import pytest
import torch

from vaelab.errors import ConfigError
from vaelab.losses import bernoulli_nll, gaussian_nll, kl_standard_normal, log_normal
from vaelab.models import build_model
from vaelab.models.vae import VAEConfig


def test_kl_closed_form_by_hand_and_against_torch_distributions():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    by_hand = -0.5 * ((1 + 0 - 0.25 - 1) + (1 + math.log(2) - 1 - 2))
    assert kl_standard_normal(mu, logvar).item() == pytest.approx(by_hand, rel=1e-6)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert kl_standard_normal(mu, logvar).item() == pytest.approx(torch.distributions.kl_divergence(q, p).sum().item(), rel=1e-6)
    assert kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).tolist() == [0.0, 0.0, 0.0]


def test_bernoulli_nll_is_summed_bce():
    logits = torch.tensor([[[[0.0, 2.0]]]])
    x = torch.tensor([[[[1.0, 0.0]]]])
    by_hand = math.log(2) + math.log(1 + math.exp(2))
    assert bernoulli_nll(logits, x).item() == pytest.approx(by_hand, rel=1e-6)


def test_gaussian_nll_by_hand_and_wss18_equivalence():
    x = torch.tensor([[[[1.0, 0.0]]]])
    mean = torch.tensor([[[[0.5, 0.25]]]])
    var = 0.5
    by_hand = sum(0.5 * ((xi - mi) ** 2 / var + math.log(var) + math.log(2 * math.pi)) for xi, mi in ((1, 0.5), (0, 0.25)))
    assert gaussian_nll(mean, x, math.log(var)).item() == pytest.approx(by_hand, rel=1e-6)
    # sigma^2 = 1/2: -log p(x|z) = sum of squared errors + constant (the WSS18 loss, 784 x MSE)
    const = 2 * 0.5 * (math.log(0.5) + math.log(2 * math.pi))
    sse = ((x - mean) ** 2).sum().item()
    assert gaussian_nll(mean, x, math.log(0.5)).item() - const == pytest.approx(sse, rel=1e-6)


def test_log_normal_matches_torch():
    z, mu, logvar = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(log_normal(z, mu, logvar), ref, atol=1e-5)


@pytest.mark.parametrize("size, channels, widths", [(28, 1, [32, 64, 128]), (32, 3, [16, 32]), (64, 3, [8, 16, 32, 64]), (8, 1, [8, 16])])
def test_vae_shapes_at_many_sizes(size, channels, widths):
    model = build_model(VAEConfig(image_size=size, channels=channels, widths=widths, latent_dim=5)).eval()
    x = torch.rand(3, channels, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 5)
    assert model.reconstruct(x).shape == x.shape
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, channels, size, size) and 0 <= samples.min() and samples.max() <= 1


def test_wss18_architecture():
    model = build_model(VAEConfig(arch="wss18", image_size=28, channels=1, latent_dim=8, likelihood="gaussian", dropout=0.5))
    assert model.encoder.net(torch.zeros(2, 1, 28, 28)).shape == (2, 5184)
    assert model.to_moments.in_features == 5184 and model.to_moments.out_features == 16
    assert [m.out_features for m in model.decoder.fc if isinstance(m, torch.nn.Linear)] == [25, 49]
    assert model.decoder(torch.zeros(2, 8)).shape == (2, 1, 28, 28)
    with pytest.raises(ConfigError, match="28x28 grayscale"):
        build_model(VAEConfig(arch="wss18", image_size=32, channels=3))


def test_image_too_small_for_architecture():
    with pytest.raises(ConfigError, match="too small for 4 stride-2 stages"):
        build_model(VAEConfig(image_size=8, channels=1, widths=[8, 8, 8, 8]))


def test_logvar_is_clamped():
    model = build_model(VAEConfig(image_size=8, channels=1, widths=[4], latent_dim=2, logvar_min=-3, logvar_max=2))
    with torch.no_grad():
        model.to_moments.bias.fill_(1e4)
    with torch.no_grad():
        _, logvar = model.encode(torch.rand(2, 1, 8, 8))
    assert float(logvar.max()) == 2.0


def test_iwae_bound_is_above_the_elbo():
    torch.manual_seed(0)
    model = build_model(VAEConfig(image_size=8, channels=1, widths=[8], latent_dim=2)).eval()
    x = torch.rand(16, 1, 8, 8).round()
    elbo = model.elbo(x)["elbo"].mean()
    iwae = model.log_likelihood(x, k=200).mean()
    assert iwae > elbo




def test_named_gan_losses_by_hand():
    from vaelab.losses import (hinge_d_loss, non_saturating_d_loss, non_saturating_g_loss, wasserstein_critic_loss,
                               wasserstein_g_loss)

    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    softplus = lambda t: math.log1p(math.exp(t))  # -log sigmoid(-t)
    # -log D(x) = softplus(-logit); -log(1 - D(G(z))) = softplus(logit)
    d = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    assert non_saturating_d_loss(real, fake).item() == pytest.approx(d, rel=1e-6)
    assert non_saturating_g_loss(fake).item() == pytest.approx((softplus(-0.5) + softplus(3.0)) / 2, rel=1e-6)
    assert wasserstein_critic_loss(real, fake).item() == pytest.approx((0.5 - 3.0) / 2 - (2.0 - 1.0) / 2)
    assert wasserstein_g_loss(fake).item() == pytest.approx(1.25)
    # hinge: max(0, 1 - 2) + max(0, 1 + 1) over real, max(0, 1 + 0.5) + max(0, 1 - 3) over fake
    assert hinge_d_loss(real, fake).item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
