"""Evaluation metrics against their definitions and against torch-fidelity."""

import math

import pytest
import torch
from torch import nn

from vaelab.losses import gaussian_nll
from vaelab.metrics import samples as sm
from vaelab.models.base import GaussianLatentModel


def test_fid_of_a_set_against_itself_is_zero_and_matches_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    torch.manual_seed(0)
    a = torch.randn(400, 8)
    b = torch.randn(400, 8) * 1.3 + 0.5
    assert sm.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    ref = fid_statistics_to_metric(fid_features_to_statistics(a.double()), fid_features_to_statistics(b.double()), False)["frechet_inception_distance"]
    assert sm.fid(a, b) == pytest.approx(ref, rel=1e-5)


def test_kid_matches_torch_fidelity_formula():
    from torch_fidelity.metric_kid import kernel_mmd

    torch.manual_seed(0)
    a, b = torch.randn(200, 6), torch.randn(200, 6) + 0.3
    # one subset holding every sample: the subset draw is a permutation, so both must agree exactly
    ours = sm.kid(a, b, subsets=1, subset_size=200)["kid"]
    ref = kernel_mmd(a.double().numpy(), b.double().numpy(), kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                     kid_kernel_poly_coef0=1, kid_kernel="poly")
    assert ours == pytest.approx(float(ref), rel=1e-6)
    same = sm.kid(a, a, subsets=50, subset_size=100)["kid"]
    shifted = sm.kid(a, a + 1.0, subsets=50, subset_size=100)["kid"]
    assert abs(same) < 0.05 * shifted  # unbiased: zero in expectation for identical sets


def test_inception_score_bounds():
    uniform_classes = torch.eye(10).repeat(20, 1) * 50  # confident and balanced: IS -> 10
    assert sm.inception_score(uniform_classes, splits=1)["is"] == pytest.approx(10.0, rel=1e-3)
    collapsed = torch.zeros(200, 10)
    collapsed[:, 3] = 50  # one class only: IS -> 1
    assert sm.inception_score(collapsed, splits=2)["is"] == pytest.approx(1.0, rel=1e-3)


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    torch.manual_seed(0)
    x = torch.randn(300, 5)
    same = sm.mmd(x, x)
    assert abs(same["mmd2"]) < 1e-2 and same["bandwidth"] > 0
    values = [sm.mmd(x, torch.randn(300, 5) + shift, bandwidth=same["bandwidth"])["mmd2"] for shift in (0.0, 0.5, 1.0, 2.0)]
    assert abs(values[0]) < 0.02
    assert values == sorted(values) and values[-1] > 0.3


def test_mmd_by_hand_is_the_unbiased_estimator_with_the_real_sets_kernel():
    x = torch.tensor([[0.0], [1.0], [3.0]])  # real: pairwise distances 1, 2, 3 -> median bandwidth 2
    y = torch.tensor([[0.5], [2.0]])
    k = lambda a, b: math.exp(-((a - b) ** 2) / (2 * 2.0**2))
    xs, ys = [0.0, 1.0, 3.0], [0.5, 2.0]
    kxx = sum(k(a, b) for i, a in enumerate(xs) for j, b in enumerate(xs) if i != j) / (3 * 2)
    kyy = sum(k(a, b) for i, a in enumerate(ys) for j, b in enumerate(ys) if i != j) / (2 * 1)
    kxy = sum(k(a, b) for a in xs for b in ys) / (3 * 2)
    result = sm.mmd(x, y)
    assert result["bandwidth"] == pytest.approx(2.0)
    assert result["mmd2"] == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)  # a biased (V-statistic) estimate differs
    biased = (sum(k(a, b) for a in xs for b in xs) / 9 + sum(k(a, b) for a in ys for b in ys) / 4 - 2 * kxy)
    assert abs(result["mmd2"] - biased) > 1e-3
    # the kernel comes from the real set alone: the same for any sample set compared against it
    assert sm.mmd(x, y * 10)["bandwidth"] == result["bandwidth"]


def test_ms_ssim_settings_adapt_to_size_and_identity_is_one():
    assert sm.ms_ssim_settings(28) == (3, 7)
    assert sm.ms_ssim_settings(64)[0] == 4
    scales, window = sm.ms_ssim_settings(176)
    assert (scales, window) == (5, 11)
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    assert float(ms_ssim(x, x, kernel_size=7, betas=(0.2, 0.3, 0.5), data_range=1.0)) == pytest.approx(1.0, abs=1e-5)
    same = sm.ms_ssim_diversity(x[:1].expand(10, -1, -1, -1).contiguous(), pairs=20)
    assert same["ms_ssim"] == pytest.approx(1.0, abs=1e-5) and same["ms_ssim_scales"] == 3
    assert sm.ms_ssim_diversity(torch.rand(10, 1, 28, 28), pairs=20)["ms_ssim"] < 0.3


def test_precision_recall_identical_sets_and_mode_collapse():
    torch.manual_seed(0)
    real = torch.randn(300, 4)
    pr = sm.precision_recall(real, real.clone())
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0
    collapsed = real[:1].repeat(300, 1) + 0.01 * torch.randn(300, 4)
    pr = sm.precision_recall(real, collapsed)
    assert pr["recall"] < 0.1 and pr["precision"] > 0.9  # one mode: realistic but covers nothing
    blurry = real * 0.0 + 5.0 + torch.randn(300, 4)  # off the data manifold
    assert sm.precision_recall(real, blurry)["precision"] < 0.1


def test_class_coverage_and_sharpness():
    logits = torch.zeros(100, 10)
    logits[torch.arange(100), torch.arange(100) % 3] = 5  # classes 0, 1, 2 only
    cc = sm.class_coverage(logits, 10)
    assert cc["classes_present"] == 3 and sum(cc["class_histogram"]) == 100
    assert cc["class_entropy_bits"] == pytest.approx(math.log2(3), rel=0.02)
    sharp = (torch.arange(16).view(1, 1, 4, 4) % 2).float().expand(2, 1, 4, 4)
    assert sm.sharpness(sharp) > sm.sharpness(torch.full((2, 1, 4, 4), 0.5)) == 0.0


class PPCA(GaussianLatentModel):
    """x = W z + b + noise, z ~ N(0, I): log p(x) = log N(x | b, W W^T + s^2 I) is known in closed form.

    The encoder is deliberately not the exact posterior (its variance is inflated), so the ELBO is loose and the
    importance-weighted bound has room to tighten towards log p(x).
    """

    def __init__(self, d=6, k=2, noise=0.5):
        nn.Module.__init__(self)
        self.config = type("C", (), {"latent_dim": k, "channels": 1, "image_size": d})()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(d, k, generator=g))
        self.b = nn.Parameter(torch.randn(d, generator=g) * 0.1)
        self.noise = noise
        self.dummy = nn.Linear(1, 1)

    def encode(self, x, y=None):
        xf = x.flatten(1) - self.b
        s2 = self.noise**2
        precision = torch.eye(self.W.shape[1]) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(precision)
        mu = xf @ self.W @ cov.T / s2
        logvar = torch.log(torch.diagonal(cov) * 3.0).expand_as(mu)  # exact mean, 3x inflated variance
        return mu, logvar

    def decoder_output(self, z, y=None):
        return (z @ self.W.T + self.b).view(-1, 1, 1, self.W.shape[0])

    def nll(self, output, x):
        return gaussian_nll(output, x.view_as(output), math.log(self.noise**2))

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(self.W.shape[0])
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.flatten(1))


def test_iwae_bounds_ordering_and_closed_form_on_ppca():
    torch.manual_seed(1)
    model = PPCA()
    x = model.decoder_output(torch.randn(64, 2)).detach() + model.noise * torch.randn(64, 1, 1, 6)
    exact = model.exact_log_px(x).mean().item()
    elbo = model.elbo(x)["elbo"].mean().item()
    iwae = {k: model.log_likelihood(x, k).mean().item() for k in (1, 10, 100, 2000)}
    assert elbo < exact and iwae[2000] <= exact + 0.05
    assert iwae[10] >= elbo and iwae[10] < iwae[100] < iwae[2000]  # tightens as K grows
    assert iwae[2000] == pytest.approx(exact, abs=0.05)
    assert iwae[1] == pytest.approx(elbo, abs=0.3)  # K = 1 is the ELBO (up to sampling noise)


class _FixedDensity(nn.Module):
    """A 'model' whose ELBO and IWAE are log p(x) of a factorised Gaussian density N(mean, sigma^2) per pixel (or the
    uniform density on [0, 1]^D when sigma is None), for checking the bits/dim convention."""

    has_likelihood = True
    is_conditional = False

    def __init__(self, mean: float = 0.5, sigma: float | None = None):
        super().__init__()
        self.mean, self.sigma = mean, sigma
        self.config = type("C", (), {"likelihood": "gaussian"})()
        self.device = torch.device("cpu")

    def _log_density(self, x):
        self.seen = x.detach().clone()  # what the evaluation gave the density
        if self.sigma is None:  # uniform on [0, 1]^D: log 1 inside, log 0 outside
            inside = ((x >= 0) & (x <= 1)).flatten(1).all(1)
            return torch.where(inside, 0.0, -math.inf).double()
        z = (x.double() - self.mean) / self.sigma
        return (-0.5 * z**2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    def elbo(self, x, y=None):
        logp = self._log_density(x)
        return {"elbo": logp, "nll": -logp, "kl": torch.zeros_like(logp)}

    def log_likelihood(self, x, k, y=None):
        return self._log_density(x)

    def reconstruct(self, x, y=None):
        return x


def test_bits_per_dim_of_a_uniform_density_on_8_bit_images_is_exactly_8():
    from vaelab.metrics.likelihood import likelihood_metrics

    levels = torch.randint(0, 256, (50, 1, 6, 6))
    x = levels.float() / 255
    density = _FixedDensity(sigma=None)
    result = likelihood_metrics(density, x, k=4, progress=False)
    # the density saw dequantised pixels: (k + u) / 256, u ~ U[0, 1), a point inside pixel k's bin, not k / 255
    assert torch.equal((density.seen * 256).floor().long(), levels)
    assert (density.seen != x).float().mean() > 0.99 and density.seen.std() > 0
    assert result["elbo_bits_per_dim"] == pytest.approx(8.0, abs=1e-9)
    assert result["iwae_bits_per_dim"] == pytest.approx(8.0, abs=1e-9)
    assert result["elbo_nats"] == pytest.approx(-36 * math.log(256))


def test_bits_per_dim_of_a_gaussian_density_match_the_dequantised_expectation_by_hand():
    """E_u log N((k + u)/256; m, s^2) = log N((k + 1/2)/256; m, s^2) - 1/(2 s^2 12 * 256^2), minus log 256 per pixel."""
    from vaelab.metrics.likelihood import likelihood_metrics

    torch.manual_seed(0)
    m, s = 0.4, 0.2
    k = torch.randint(0, 256, (400, 1, 8, 8)).double()
    x = (k / 255).float()
    centre = (k + 0.5) / 256
    by_hand = (-0.5 * ((centre - m) / s) ** 2 - 1 / (2 * s**2 * 12 * 256**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
               - math.log(256)).flatten(1).sum(1).mean()
    result = likelihood_metrics(_FixedDensity(m, s), x, k=4, progress=False)
    assert result["elbo_nats"] == pytest.approx(float(by_hand), abs=0.05)  # the u noise averages over 25,600 pixels
    assert result["elbo_bits_per_dim"] == pytest.approx(-float(by_hand) / (64 * math.log(2)), abs=1e-3)
    assert "256 levels" in result["settings"]["dequantized"]


def test_bernoulli_on_grey_levels_is_flagged_not_normalised():
    from vaelab.metrics.likelihood import likelihood_metrics

    model = _FixedDensity(sigma=None)
    model.config.likelihood = "bernoulli"
    x = torch.rand(10, 1, 4, 4)
    assert likelihood_metrics(model, x, k=0, progress=False)["normalised"] is False
    assert "normalised" not in likelihood_metrics(model, x.round(), k=0, binarized=True, progress=False)


def test_log_p_x_of_a_conditional_model_is_the_log_mean_exp_of_its_class_conditionals():
    """A conditional 'model' whose log p(x|y) is known per class: log p(x) = log (1/K) sum_y p(x|y), and the
    conditional numbers (with the true label) are reported beside it."""
    from vaelab.metrics.likelihood import likelihood_metrics

    class ClassDensity(_FixedDensity):
        is_conditional = True

        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"likelihood": "bernoulli", "num_classes": 3})()

        def _log_density(self, x, y):
            return -(x.flatten(1).sum(1).double() + 2.0 * y.double())  # class c costs 2c nats more

        def elbo(self, x, y=None):
            logp = self._log_density(x, y) - 1.0  # the ELBO is 1 nat below the IWAE here
            return {"elbo": logp, "nll": -logp, "kl": torch.zeros_like(logp)}

        def log_likelihood(self, x, k, y=None):
            return self._log_density(x, y)

    x = torch.randint(0, 2, (30, 1, 4, 4)).float()
    y = torch.arange(30) % 3
    result = likelihood_metrics(ClassDensity(), x, y, k=5, binarized=True, progress=False)
    base = -x.flatten(1).sum(1).double()
    marginal = (torch.stack([base - 2.0 * c for c in range(3)], 1).logsumexp(1) - math.log(3)).mean()
    assert result["iwae_nats"] == pytest.approx(float(marginal), abs=1e-9)
    assert result["elbo_nats"] == pytest.approx(float(marginal) - 1.0, abs=1e-9)
    assert result["conditional_iwae_nats"] == pytest.approx(float((base - 2.0 * y).mean()), abs=1e-9)
    assert result["settings"]["conditioning"].startswith("log p(x) = log sum_y")


def test_precision_recall_on_points_whose_knn_radii_are_known():
    """1-D points: real 0, 1, 2, 3, 10 have 1-NN radii 1, 1, 1, 1, 7 and 2-NN radii 2, 1, 1, 2, 8 (the point itself
    excluded); fakes 0.5, 5, 16, 17.5 have 1-NN radii 4.5, 4.5, 1.5, 1.5. A radius off by one neighbour fails."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = torch.tensor([[0.5], [5.0], [16.0], [17.5]])
    one = sm.precision_recall(real, fake, k=1)
    assert one["precision"] == pytest.approx(3 / 4)  # 17.5 is 7.5 from 10, outside its radius 7
    assert one["recall"] == pytest.approx(4 / 5)  # 10 is 5 from the fake 5 (radius 4.5), 6 from 16 (radius 1.5)
    assert sm.precision_recall(real, fake, k=2)["precision"] == pytest.approx(1.0)  # 17.5 within 10's radius 8
    # density: 0.5 is in the balls of 0 and 1, 5 and 16 in 10's, 17.5 in none: (2 + 1 + 1 + 0) / (k=1 * 4 fakes);
    # coverage: the balls of 0, 1 (the fake 0.5) and 10 (the fake 5) hold a fake, 2's and 3's do not
    assert one["density"] == pytest.approx(1.0) and one["coverage"] == pytest.approx(3 / 5)


def test_scattered_samples_inflate_recall_but_not_coverage():
    """Naeem et al. 2020's case: samples collapsed on one mode plus a few far-flung outliers. The outliers' k-NN
    balls are wide and swallow most real points (recall looks fine); coverage, with balls around the real points,
    sees the collapse."""
    torch.manual_seed(0)
    real = torch.randn(500, 4)
    collapsed = real[:1] + 0.05 * torch.randn(480, 4)
    outliers = 8.0 * torch.randn(20, 4)
    pr = sm.precision_recall(real, torch.cat([collapsed, outliers]), k=3)
    assert pr["recall"] > 0.9 and pr["coverage"] < 0.05
    same = sm.precision_recall(real, torch.randn(500, 4), k=3)
    assert same["coverage"] > 0.85 and 0.8 < same["density"] < 1.2


def test_log_p_x_of_a_real_cvae_against_brute_force_integration_over_its_2d_latent():
    """A tiny CVAE with a 2-D latent (its decoder's last layer scaled up, so p(x|z, y) depends on z and y and the
    ELBO is loose): evaluate's log p(x) = log (1/10) sum_y p(x|y) by importance sampling against the same sum with
    every p(x|y) integrated over a grid of z (step 0.1 over [-5, 5]^2), computed here from the decoder alone."""
    from conftest import built_model
    from vaelab.config import DataConfig
    from vaelab.data import first_images, load_data
    from vaelab.metrics.likelihood import likelihood_metrics

    torch.manual_seed(0)
    model = built_model("cvae-mnist", **{"model.widths": "[8, 16]", "model.latent_dim": 2}).eval()
    with torch.no_grad():
        model.decoder.net[-1].weight.mul_(6.0)
    test = load_data(DataConfig()).test
    x = (first_images(test, 1000)[[0, 250, 700]] > 0.5).float()  # binary already: binarizing leaves it as it is
    y = test.labels[[0, 250, 700]]
    step = 0.1
    grid = torch.arange(-5.0, 5.0 + 1e-9, step)
    z = torch.cartesian_prod(grid, grid)
    log_prior_mass = (-0.5 * (z**2).sum(1) - math.log(2 * math.pi)).double() + 2 * math.log(step)
    per_class = []
    with torch.no_grad():
        for c in range(10):
            probs = torch.sigmoid(model.decoder_output(z, torch.full((len(z),), c)).double()).flatten(1)
            log_px_z = torch.stack([(xi.flatten() * probs.clamp_min(1e-12).log()
                                     + (1 - xi.flatten()) * (1 - probs).clamp_min(1e-12).log()).sum(1) for xi in x])
            per_class.append((log_px_z + log_prior_mass).logsumexp(1))
    brute = float((torch.stack(per_class, 1).logsumexp(1) - math.log(10)).mean())
    result = likelihood_metrics(model, x, y, k=2000, binarized=True, progress=False)
    assert result["iwae_nats"] == pytest.approx(brute, abs=0.1)
    assert result["elbo_nats"] < brute - 0.2  # the bound is loose here, so the check above is not the ELBO's
