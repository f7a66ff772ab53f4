"""The sampler fit's copy guard refuses (issue 41, item 3): a candidate whose draws are training codes (all of them, or
a minority a median lets through) is never kept; when every candidate is refused the run samples from the prior and
says so; a statistic that was not measured fails rather than passes."""

import json

import pytest
import torch

import vaelab.samplers.fit as fit_module
from conftest import PixelCodes, tiny_overrides
from vaelab import load
from vaelab.config import load_config
from vaelab.data import load_data
from vaelab.errors import VaelabError
from vaelab.samplers import MAX_CODES, fit_sampler, refused_record
from vaelab.data.splits import ImageSet
from vaelab.samplers.guard import COPY_SHARE_LIMIT, CopyGuard, level, refusal
from vaelab.training import train


def _images(n, generator):
    """uint8 (n, 1, 4, 4) 'images' of one smooth distribution (a mean level and a gradient, plus noise)."""
    level, slope = torch.rand(n, 1, 1, 1, generator=generator), torch.rand(n, 1, 1, 1, generator=generator) - 0.5
    ramp = torch.linspace(-0.3, 0.3, 4).view(1, 1, 1, 4)
    x = 0.2 + 0.6 * level + slope * ramp + 0.05 * torch.randn(n, 1, 4, 4, generator=generator)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def test_the_guard_refuses_draws_at_training_codes_even_a_minority_and_passes_unseen_images():
    """Samples as novel as unseen images pass (their copy share is the 1% the statistic is built on); draws at the
    training codes are refused, all of them by both statistics, 15% of them by the copy share alone (the median
    sits where unseen images' does)."""
    g = torch.Generator().manual_seed(0)
    train_set, validation = ImageSet(images=_images(3000, g)), ImageSet(images=_images(500, g))
    guard = CopyGuard(PixelCodes(), train_set, torch.arange(3000), validation)
    assert guard.usable and guard.settings["training_images"] == 3000
    unseen = _images(500, g).float() / 255
    training = train_set.images.float() / 255
    copies = lambda share: torch.cat([training[: round(500 * share)], unseen[round(500 * share):]])
    honest, all_copies, minority = guard.measure(unseen), guard.measure(copies(1.0)), guard.measure(copies(0.15))
    assert refusal(honest) is None and honest["copy_share"] <= 0.03 and level(honest) == 2
    assert refusal(all_copies) and all_copies["copy_share"] == 1.0 and all_copies["memorisation_ratio"] < 0.1
    assert minority["memorisation_ratio"] >= 0.9 and minority["memorisation_ratio_pixels"] >= 0.9  # a median passes
    assert minority["copy_share"] > COPY_SHARE_LIMIT and "sit nearer to a training image" in refusal(minority)
    # only the training images the fit encoded are its reference: copies of others are not this fit's codes
    partial = CopyGuard(PixelCodes(), train_set, torch.arange(1500, 3000), validation)
    assert partial.measure(copies(1.0))["copy_share"] < 0.1


def _planted(rows):
    """Candidates whose measurements are given (validation FID, guard statistics): the fit's policy alone."""

    def measure(self, sampler):
        return dict(rows[len(self.rows)])

    return measure


HONEST = {"validation_fid": 30.0, "memorisation_ratio_pixels": 0.95, "memorisation_ratio": 1.05, "copy_share": 0.01}
COPYING = {"validation_fid": 5.0, "memorisation_ratio_pixels": 0.3, "memorisation_ratio": 0.4, "copy_share": 0.9}
MINORITY = {"validation_fid": 10.0, "memorisation_ratio_pixels": 0.95, "memorisation_ratio": 1.0, "copy_share": 0.15}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guard") / "vae"
    train(load_config(overrides=tiny_overrides(**{"train.epochs": 1, "train.confirm_best": "false"})), folder,
          progress=False)
    return folder


def test_the_fit_never_keeps_a_refused_candidate_whatever_its_fid(run, monkeypatch):
    monkeypatch.setattr(fit_module.Candidates, "_measure", _planted([COPYING, MINORITY, HONEST, COPYING]))
    fitted = fit_sampler(run, components=[10, 20], progress=False)
    rows = fitted.settings["selection"]
    assert [("refused" in row) for row in rows] == [True, True, False, True]
    assert fitted.settings["chosen"]["validation_fid"] == 30.0 and (fitted.settings["chosen"]["components"],
                                                                    fitted.settings["chosen"]["spread"]) == (20, 1.0)
    # the guard's reference is every training image the fit encoded, and its draws are not the best-weights score's
    training = load_data(load(run).run_config.data).train
    assert fitted.settings["guard"]["training_images"] == fitted.settings["codes"] == min(len(training), MAX_CODES)
    assert fitted.settings["score"]["seed_stream"] == "sampler_fit"


def test_when_every_candidate_copies_the_run_falls_back_to_the_prior_and_says_so(run, monkeypatch, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    monkeypatch.setattr(fit_module.Candidates, "_measure", _planted([HONEST]))
    fit_sampler(folder, components=[10], spreads=[1.0], progress=False)  # a kept sampler, replaced below
    assert (folder / "sampler-gmm.json").is_file()
    monkeypatch.setattr(fit_module.Candidates, "_measure", _planted([COPYING, MINORITY]))
    assert fit_sampler(folder, components=[20], spreads=[1.0, 1.2], progress=False) is None
    assert not (folder / "sampler-gmm.json").exists()  # the earlier density does not stay behind as the default
    record = refused_record(folder, "gmm")
    assert record["fallback"] == "prior" and "refused every candidate" in record["reason"]
    assert all(row["refused"] for row in record["selection"])
    with pytest.raises(VaelabError, match="kept no density"):
        load(folder, sampler="gmm")


def test_a_training_run_whose_guard_refuses_everything_records_the_prior(tmp_path, monkeypatch):
    import vaelab.samplers.guard as guard

    monkeypatch.setattr(guard, "COPY_SHARE_LIMIT", -1.0)  # no candidate can pass
    folder = tmp_path / "vae"
    train(load_config(overrides=tiny_overrides(**{"train.epochs": 1, "train.sampler": "gmm"})), folder,
          progress=False)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["sampler"]["kind"] == "prior" and summary["sampler"]["fallback_from"] == "gmm"
    events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "warning" and "samples from the prior" in e["message"] for e in events)
    model = load(folder)  # the run's default sampler is the gmm: its draws come from the prior, and it says why
    assert model.sampler_kind == "prior" and "kept no density" in model.sampler_note


def test_a_measurement_that_is_missing_fails_rather_than_passes():
    assert refusal(None) and refusal({"validation_fid": 3.0}) and level({"validation_fid": 3.0}) == 0
    passing = {"memorisation_ratio_pixels": 0.95, "memorisation_ratio": 1.02, "copy_share": 0.01}
    assert refusal(passing) is None and level(passing) == 2
    blurry = {**passing, "memorisation_ratio_pixels": 0.8}  # only as far as the reconstructions: passes, ranked lower
    assert refusal(blurry) is None and level(blurry) == 1
    assert refusal({**passing, "memorisation_ratio_pixels": float("nan"), "memorisation_ratio": float("nan")})
    assert refusal({**passing, "copy_share_features": 0.2})
