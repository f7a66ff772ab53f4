"""Latent samplers: densities fitted on a trained encoder's codes, used in place of the prior N(0, I).

The package's face: ``load(run)`` (``vaelab.load``) rebuilds a run's model with the sampler fitted on its weights
attached; ``fit_sampler`` (``samplers.fit``) fits one, its settings chosen on the validation images and its draws
guarded against copying training images (``samplers.guard``). Kinds: ``prior`` (no fit: N(0, I), the model's own),
``gmm`` (``samplers.mixture``), ``flow`` (``samplers.flow``), ``two-stage`` (``samplers.two_stage``); each file's
format in ``samplers.base``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RunFolderError, VaelabError
from .base import LatentSampler, file_sha256, read_sampler_files, sampler_paths
from .fit import (FULL_COVARIANCE_MAX_DIM, GMM_COMPONENTS, MAX_CODES, SAMPLER_KINDS, describe, encode_codes,
                  fit_sampler, mixture_forms, proxy_mixture, refused_record)
from .flow import FlowSampler, fit_flow
from .mixture import MixtureSampler, fit_mixture
from .two_stage import TwoStageSampler, fit_two_stage

KIND_NAMES = ("prior", *SAMPLER_KINDS)


def load(run: str | Path, device: str | torch.device = "auto", weights: str = "best", sampler: str | None = None):
    """``vaelab.load``: the model of run folder ``run`` with its trained weights (``vaelab.run.load``), in eval mode,
    drawing its latents from ``sampler`` (models with an encoder): None takes the run's default
    (``train.sampler``) where it has been fitted and the prior otherwise; ``"prior"`` the prior N(0, I); a kind
    (``"gmm"``) that kind's fitted file, or an error that says how to fit it. ``model.sampler_kind`` says which."""
    from ..run import load as load_weights

    model = load_weights(run, device=device, weights=weights)
    model.sampler_kind, model.sampler_note = "prior", None
    if sampler not in (None, "prior") and sampler not in SAMPLER_KINDS:
        raise VaelabError(f"unknown sampler {sampler!r}; the samplers are {', '.join(KIND_NAMES)}")
    if not model.has_encoder:
        if sampler not in (None, "prior"):
            raise VaelabError(f"{model.registry_name} has no encoder: it samples from its own prior, not a fitted "
                              f"sampler")
        return model
    kind = sampler or model.run_config.train.sampler
    which = _sampler_weights(Path(run), kind, weights)
    fitted = kind in SAMPLER_KINDS and sampler_paths(Path(run), kind, which)[1].is_file()
    refused = None if fitted or kind == "prior" else refused_record(run, kind, which)
    if refused is not None and refused.get("weights_sha256") != file_sha256(Path(run) / model.weights_file):
        refused = None  # a record of other weights says nothing of these
    if refused is not None:  # the fit kept no density: the prior, said where the user can see it
        model.sampler_note = f"the {kind} fit kept no density ({refused.get('reason', 'see its record')}): prior draws"
        if sampler is not None:
            raise VaelabError(f"the '{kind}' sampler fit of {run} kept no density: {refused.get('reason')}. Draw from "
                              f"the prior (--sampler prior), or refit with other candidates (`vaelab fit-sampler "
                              f"{run} --sampler {kind} --components ...`)")
    if kind != "prior" and (sampler is not None or fitted):  # an unfitted default quietly stays the prior
        model.latent_sampler = load_sampler(run, kind, model.config.latent_dim, which,
                                            file_sha256(Path(run) / model.weights_file), weights)
        model.sampler_kind = kind
    return model


def _sampler_weights(run: Path, kind: str, weights: str) -> str:
    """Which sampler files serve ``weights``: the last weights' own where fitted, else the kept weights' (valid for
    them only where both are one file, which the weights hash checks)."""
    if weights == "last" and sampler_paths(run, kind, "last")[1].is_file():
        return "last"
    return "best"


def load_sampler(run: str | Path, kind: str, latent_dim: int, which: str = "best",
                 weights_sha256: str | None = None, weights: str | None = None) -> LatentSampler:
    """The saved sampler ``kind`` of run folder ``run`` (``which``: the files of its best or last weights),
    checked against the model's latent size and, given ``weights_sha256``, against the weights file it will
    decode for (``weights``: best | last, for the error's command)."""
    if kind not in SAMPLER_KINDS:
        raise VaelabError(f"unknown sampler {kind!r}; the samplers are {', '.join(KIND_NAMES)}")
    tensors, meta = read_sampler_files(Path(run), kind, which)
    fitted_on = meta.get("weights_sha256")
    if weights_sha256 is not None and fitted_on is not None and fitted_on != weights_sha256:
        raise RunFolderError(
            f"the '{kind}' sampler of {run} was fitted on the codes of other weights than the {weights or 'given'} "
            f"weights (its weights SHA-256 {fitted_on[:12]}..., theirs {weights_sha256[:12]}...): it would decode "
            f"another model's codes. Fit one for them with `vaelab fit-sampler {run} --sampler {kind}"
            f"{' --weights last' if weights == 'last' else ''}`, or draw from the prior (--sampler prior)")
    try:
        sampler = SAMPLER_KINDS[kind].from_tensors(tensors, meta)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise VaelabError(f"{sampler_paths(Path(run), kind)[0]} does not hold a '{kind}' sampler ({exc}); refit it "
                          f"with `vaelab fit-sampler {run} --sampler {kind}`") from None
    if sampler.latent_dim != latent_dim:
        raise VaelabError(f"the '{kind}' sampler of {run} draws {sampler.latent_dim}-D codes but the model's latent "
                          f"has {latent_dim}; refit it with `vaelab fit-sampler {run} --sampler {kind}`")
    return sampler


__all__ = ["FULL_COVARIANCE_MAX_DIM", "FlowSampler", "GMM_COMPONENTS", "KIND_NAMES", "LatentSampler", "MAX_CODES",
           "MixtureSampler", "SAMPLER_KINDS", "TwoStageSampler", "describe", "encode_codes", "fit_flow", "fit_mixture",
           "fit_sampler", "fit_two_stage", "load", "load_sampler", "mixture_forms", "proxy_mixture", "refused_record"]
