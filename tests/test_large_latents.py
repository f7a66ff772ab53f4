"""Mixture samplers at large latents (issue 40): the diagonal and low-rank-plus-diagonal forms recover what they
are fitted on, draws never build an (n, D, D) tensor and stay in bounded memory, and a run's fit at a latent above
FULL_COVARIANCE_MAX_DIM chooses among those forms."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from vaelab.config import load_config
from vaelab.samplers import FULL_COVARIANCE_MAX_DIM, fit_mixture, fit_sampler, load_sampler
from vaelab.training import train


def _clustered_codes(n=3000, dim=256, seed=0):
    """Codes (n, dim): three clusters (weights 0.5, 0.3, 0.2) 8 apart in a random 3-D subspace, spread 0.5 there,
    plus independent noise of 0.1 in every dimension; which cluster drew each, and the cluster centres (3, dim)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, 3, generator=g, dtype=torch.float64))[0].float()  # (dim, 3)
    centres = 8.0 / 2**0.5 * torch.eye(3) @ basis.T  # pairwise 8 apart
    which = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    inside = 0.5 * torch.randn(n, 3, generator=g) @ basis.T
    return centres[which] + inside + 0.1 * torch.randn(n, dim, generator=g), which, centres


@pytest.mark.parametrize("covariance", ["full", "diag", "pca"])
def test_draws_are_the_batched_formula_without_an_n_by_d_by_d_tensor(covariance):
    codes, _, _ = _clustered_codes(800, dim=12)
    fitted = fit_mixture(codes, 4, covariance=covariance, spread=1.3, rank=5)
    draws = fitted.sample(300, generator=torch.Generator().manual_seed(5))
    # the reference: every draw's own factor stacked into one (n, r, r) tensor, as the sampler did before
    g = torch.Generator().manual_seed(5)
    picks = torch.multinomial(fitted.weights, 300, replacement=True, generator=g)
    eps = torch.randn(300, fitted.means.shape[1], generator=g, dtype=torch.float64)
    factors = fitted.scale_tril if covariance != "diag" else torch.diag_embed(fitted.scale_tril)
    z = fitted.means[picks] + 1.3 * (factors[picks] @ eps.unsqueeze(-1)).squeeze(-1)
    if covariance == "pca":
        p = fitted.projection
        z = p["center"] + z @ p["basis"].T + 1.3 * p["residual_scale"] * torch.randn(300, 12, generator=g,
                                                                                     dtype=torch.float64)
    assert torch.allclose(draws, z.float(), atol=1e-5)


@pytest.mark.parametrize("covariance", ["diag", "pca"])
def test_the_large_latent_forms_recover_clustered_codes(covariance, tmp_path):
    codes, which, centres = _clustered_codes()
    fitted = fit_mixture(codes, 3, covariance=covariance)
    draws = fitted.sample(3000, generator=torch.Generator().manual_seed(1))
    nearest = torch.cdist(draws, centres).argmin(1)
    shares = torch.bincount(nearest, minlength=3) / 3000.0
    assert torch.allclose(shares, torch.tensor([0.5, 0.3, 0.2]), atol=0.04), shares  # binomial sd <= 0.009
    # every cluster's draws centred on it, and spread like its codes (total variance within 15%)
    for j in range(3):
        mine, theirs = draws[nearest == j], codes[which == j]
        assert (mine.mean(0) - centres[j]).norm() < 0.5
        assert abs(float(mine.var(0).sum() / theirs.var(0).sum()) - 1) < 0.15
    fitted.save(tmp_path)
    again = load_sampler(tmp_path, "gmm", latent_dim=256)
    same = lambda s: s.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same(fitted), same(again)) and again.settings["covariance"] == covariance


def test_a_latent_2000_mixture_fits_and_draws_in_bounded_memory():
    """A 20-component fit on 2,000 codes of 2,000 dimensions and 2,000 draws, in a fresh process: the full form's
    draws alone would be a (2000, 2000, 2000) float64 tensor (64 GB); the bound is the interpreter with torch and
    scikit-learn (about 0.5 GB) plus 1 GB: 1.5 GB."""
    code = """
import resource, sys, time, torch
sys.path.insert(0, "tests")
from test_large_latents import _clustered_codes
from vaelab.samplers import fit_mixture
codes, _, _ = _clustered_codes(2000, dim=2000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for form in ("pca", "diag"):
    fitted = fit_mixture(codes, 20, covariance=form)
    assert fitted.sample(2000, generator=torch.Generator().manual_seed(0)).shape == (2000, 2000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, before / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    peak_gb, start_gb = map(float, out.stdout.split())
    assert peak_gb < 1.5, (peak_gb, start_gb)


def test_a_run_with_a_large_latent_fits_its_sampler_among_the_large_latent_forms(tmp_path):
    run = tmp_path / "vae"
    latent = FULL_COVARIANCE_MAX_DIM + 64
    train(load_config(overrides=tiny_overrides(**{"train.epochs": 1, "model.latent_dim": latent})), run,
          progress=False)
    fitted = fit_sampler(run, components=[10], progress=False)
    forms = {row["covariance"] for row in fitted.settings["selection"]}
    assert forms == {"pca", "diag"} and fitted.settings["chosen"]["covariance"] in forms
    assert fitted.sample(7).shape == (7, latent)
    saved = json.loads((run / "sampler-gmm.json").read_text())
    assert saved["settings"]["covariance"] == fitted.settings["chosen"]["covariance"]
