"""Latent samplers: densities fitted on a trained encoder's codes, used in place of the prior N(0, I).

``fit_sampler(run)`` reads a run folder (its best weights, the data its config names), encodes the training images
(posterior means), fits the candidates of a kind's settings on those codes, and keeps the one whose samples score
best against the validation images (the best-weights score's FID) among those that do not copy training images
(``metrics.samples.memorisation``: the samples' median nearest-neighbour distance to the training set, in pixels,
at least ``MEMORISATION_FLOOR`` times a reference's own). Two references, in this order (``_guard_level``): the
validation images themselves (the issues' bar: samples as far from the training images as unseen real ones), and
the model's reconstructions of them (unseen images with the model's own blur, so a blurry model whose candidates
all read below the first is not taken for a copying one). The first matters on small folders: there the decoder
has learned its few hundred training images, its reconstructions of unseen images lean towards them, and the second
reference lets near-copies through (VAE-GAN on 350 digits: 50 components read 0.94 against the reconstructions and
0.82 against the validation digits; RESULTS.md, issue 34). Where no candidate reaches the first reference, the
smallest fitted density is judged again at the wider spreads ``WIDER_SPREADS`` (more varied draws, further from the
training codes) before the second reference decides. The test split is never looked at. The result is saved in the
run folder (``base``) and attached by ``vaelab.load(run)`` so that ``model.sample`` draws from it.

Kinds: ``prior`` (no fit: N(0, I), the model's own); ``gmm`` (``mixture``: a Gaussian mixture, one per class where
the data have labels); ``flow`` (a masked autoregressive flow); ``two-stage`` (Dai & Wipf's second-stage VAE). The fitted
kinds condition on the class where the data have labels, so ``--label k`` works for unconditional models too. The
network kinds keep the epoch with the best loss on the validation images' codes; every kind's spread (a factor on
its base noise or its components' standard deviations) is then chosen by validation FID.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import RunFolderError, VaelabError
from .base import LatentSampler, file_sha256, read_sampler_files, sampler_paths
from .flow import FlowSampler, fit_flow
from .mixture import MixtureSampler, fit_mixture
from .two_stage import TwoStageSampler, fit_two_stage

SAMPLER_KINDS = {"gmm": MixtureSampler, "flow": FlowSampler, "two-stage": TwoStageSampler}
KIND_NAMES = ("prior", *SAMPLER_KINDS)
MEMORISATION_FLOOR = 0.9
# the candidates a gmm fit compares on validation: total components (split over the classes) and spread
GMM_COMPONENTS = (10, 20, 50, 100)
GMM_SPREADS = (1.0, 1.2)
# full covariances up to this latent size (D^2 / 2 numbers per component from a few hundred codes); above it the
# low-rank-plus-diagonal and the diagonal forms (vaelab/samplers/mixture.py), both judged like the rest: a full fit
# at latent 2,000 built 16 GB for 500 draws and did not finish (issue 40)
FULL_COVARIANCE_MAX_DIM = 64
NETWORK_SPREADS = (0.8, 1.0)
MAX_CODES = 20_000  # training images encoded for a fit (spread over the split); enough for these densities
# tried only where no candidate's samples sit as far from the training images as the validation images (a small
# folder: GVAE on 350 digits, 0.74-0.84 at spreads 1.0-1.2, 0.92 at 1.5 with 10 components; RESULTS.md)
WIDER_SPREADS = (1.5, 2.0)
GUARD_SAMPLES = 500  # draws the copy guard measures (at least; as many as the validation images where more)


@torch.no_grad()
def encode_codes(model, split, limit: int = MAX_CODES, batch: int = 500,
                 what: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Posterior means (N, D) of up to ``limit`` images spread over a split, and their labels (N,) or None. The
    images are read a batch at a time (uint8 until the batch) and encoded on the model's device; only the codes are
    kept. ``what``: a progress line's name for the phase (None: silent)."""
    from contextlib import nullcontext

    from ..data import image_chunks
    from ..progress import Phase

    was_training = model.training
    model.eval()
    codes, labels = [], []
    total = min(limit, len(split))
    with Phase(what, total) if what else nullcontext() as phase:
        for xb, yb in image_chunks(split, limit, chunk=batch, spaced=True):
            cond = None if yb is None or not model.is_conditional else yb.to(model.device)
            codes.append(model.encode(xb.to(model.device), cond)[0].float().cpu())
            labels.append(yb)
            if phase is not None:
                phase.advance(len(xb))
    model.train(was_training)
    if not codes:
        return torch.zeros(0, model.config.latent_dim), None
    return torch.cat(codes), (None if labels[0] is None else torch.cat(labels))


def load(run: str | Path, device: str | torch.device = "cpu", weights: str = "best", sampler: str | None = None):
    """``vaelab.load``: the model of run folder ``run`` with its trained weights (``vaelab.run.load``), in eval mode,
    drawing its latents from ``sampler`` (models with an encoder): None takes the run's default
    (``train.sampler``) where it has been fitted and the prior otherwise; ``"prior"`` the prior N(0, I); a kind
    (``"gmm"``) that kind's fitted file, or an error that says how to fit it. ``model.sampler_kind`` says which."""
    from ..run import load as load_weights

    model = load_weights(run, device=device, weights=weights)
    model.sampler_kind = "prior"
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


def fit_sampler(run: str | Path, kind: str = "gmm", weights: str = "best", components: list[int] | None = None,
                spreads: list[float] | None = None, per_class: bool | None = None, seed: int = 0,
                progress: bool = True, device: str | torch.device = "cpu") -> LatentSampler:
    """Fit sampler ``kind`` for run folder ``run`` (see the module docstring), save it there and return it. Its
    ``settings["selection"]`` lists every candidate with its validation FID and memorisation ratio, and
    ``settings["chosen"]`` the kept one. ``components`` are the gmm's candidates; ``spreads`` any kind's. The
    encoding, sampling and scoring run on ``device`` (the run's: the trainer passes its own)."""
    from ..data import load_data
    from ..metrics.quality import SampleQuality
    from ..metrics import samples as sm
    from ..processes import stream_seed
    from ..run import load as load_weights

    if kind not in SAMPLER_KINDS:
        raise VaelabError(f"--sampler {kind}: a fitted sampler is one of {', '.join(SAMPLER_KINDS)} (prior needs no fit)")
    if components and kind != "gmm":
        raise VaelabError(f"--components sets the gmm's candidates; the '{kind}' sampler has none")
    start = time.perf_counter()
    model = load_weights(run, device=device, weights=weights)
    if not model.has_encoder:
        raise VaelabError(f"{model.registry_name} has no encoder, so it has no codes to fit a sampler on; its samples "
                          f"come from its own prior")
    cfg = model.run_config
    data = load_data(cfg.data)
    codes, labels = encode_codes(model, data.train, what="encoding the training images for the sampler fit")
    use_classes = (labels is not None and data.num_classes >= 2) if per_class is None else per_class
    if use_classes and labels is None:
        raise VaelabError(f"a per-class sampler needs class labels, and {data.description} has none")
    class_names = data.class_names if use_classes else None
    labels = labels if use_classes else None
    widen = spreads is None  # the wider spreads are a fallback of the default candidates only
    spreads = list(spreads or (GMM_SPREADS if kind == "gmm" else NETWORK_SPREADS))
    few = len(data.validation) < 2  # nothing to choose on: the first candidate, fitted once
    sizes = list(components or GMM_COMPONENTS)[: 1 if few else None]
    forms = mixture_forms(codes.shape[1])
    staged = kind == "gmm" and len(forms) > 1 and not few  # the covariance form first, then the sizes in it
    if kind == "gmm":
        bases = list(_mixtures(codes, labels, class_names, sizes[:1] if staged else sizes, seed, forms))
    else:
        val_codes, val_labels = encode_codes(model, data.validation) if not few else (None, None)
        fit = fit_flow if kind == "flow" else fit_two_stage
        bases = [({}, fit(codes, labels, class_names, val_codes, val_labels if use_classes else None, seed=seed))]
    judge = SampleQuality(data, cfg.data, n=cfg.train.best_samples, seed=seed, progress=progress, device=device)
    x_train, _ = _spread(data.train, 2000)
    x_val, y_val = _spread(data.validation, 500)
    if len(x_val) >= 2:  # the guard's second reference: unseen images with the model's own blur
        from ..sampling import reconstruct_all

        x_val_rec = reconstruct_all(model, x_val, y_val, across_processes=False)  # main process alone
    rows, best, chosen = [], None, None

    def judge_each(spread_list, densities):
        nonlocal best, chosen
        for base, fitted in densities:
            for spread in spread_list:
                row, sampler = {**base, "spread": spread}, fitted.with_spread(spread)
                model.latent_sampler = sampler
                scored: list = []
                row["validation_fid"] = judge.score(model, keep=scored)
                if len(x_val) >= 2:  # at least GUARD_SAMPLES draws: a few dozen validation images are noise enough
                    # the score's samples, topped up from the fit's own stream (one decode of each draw, not two)
                    fake = scored[0] if scored else torch.zeros(0)
                    more = max(len(x_val), GUARD_SAMPLES) - len(fake)
                    if more > 0:
                        draws = torch.Generator().manual_seed(stream_seed("sampler_fit", seed))
                        fake = torch.cat([fake, model.sample(more, generator=draws).float().cpu()])
                    check = sm.memorisation(fake, x_train, x_val, x_val_rec)
                    row["memorisation_ratio"] = check["ratio_to_reconstructions"]
                    row["memorisation_ratio_pixels"] = check["ratio"]
                rows.append(row)
                if progress:
                    print(f"  {kind} {describe(row)}: validation FID "
                          f"{row['validation_fid'] if row['validation_fid'] is not None else float('nan'):.2f}, "
                          f"memorisation ratio {row.get('memorisation_ratio_pixels', float('nan')):.2f} against the "
                          f"validation images, {row.get('memorisation_ratio', float('nan')):.2f} against their "
                          f"reconstructions", flush=True)
                if _better(row, best):
                    best, chosen = row, sampler

    if staged:  # each form at the first size and spread; the other spreads and sizes in the better form alone
        judge_each(spreads[:1], bases)
        bases = [b for b in bases if b[0]["covariance"] == best.get("covariance", forms[0])]
        judge_each(spreads[1:], bases)
        more = list(_mixtures(codes, labels, class_names, sizes[1:], seed, (bases[0][0]["covariance"],)))
        judge_each(spreads, more)
        bases += more
    else:
        judge_each(spreads[: 1 if few else None], bases)
    if widen and not few and len(x_val) >= 2 and _guard_level(best) < 2:
        # the smallest mixture: at every spread measured it drew furthest from the training images
        smallest = min(bases, key=lambda b: b[1].settings.get("components", 0))
        if progress:
            print(f"  no candidate's samples sit as far from the training images as the validation images: trying "
                  f"{describe({**smallest[0], 'spread': WIDER_SPREADS[0]})} and {WIDER_SPREADS[1]}", flush=True)
        judge_each(WIDER_SPREADS, [smallest])
    model.latent_sampler = None
    chosen.settings.update({"selection": rows, "chosen": best, "weights": model.weights_file, "seed": seed,
                            "rule": f"lowest validation FID among the candidates whose samples sit >= "
                                    f"{MEMORISATION_FLOOR} times as far from the training images as the validation "
                                    f"images (memorisation_ratio_pixels) and as the model's reconstructions of them "
                                    f"(memorisation_ratio); where none reaches the first, the smallest density at "
                                    f"spreads {', '.join(map(str, WIDER_SPREADS))} too; failing that, the second "
                                    f"alone",
                            "fit_seconds": time.perf_counter() - start})
    chosen.settings["weights_sha256"] = file_sha256(Path(run) / model.weights_file)
    chosen.save(run, weights if weights == "last" else "best", chosen.settings["weights_sha256"])
    return chosen


PROXY_COMPONENTS = 20  # the best-weights score's mixture: components in all (split over the classes)
PROXY_CODES = 1000  # training images encoded for it


def proxy_mixture(data, seed: int = 0):
    """model -> the cheap mixture the best-weights score draws through (vaelab.metrics.quality): ``PROXY_COMPONENTS``
    components (per class where the data have labels; a tenth of a class's codes at most) on the posterior means of
    up to ``PROXY_CODES`` training images of ``data``, 0.2-1 s. On mnist5k it keeps the same epoch as the prior score
    (RESULTS.md); on a small folder it scores the weights as the user will sample them."""
    classes = data.train.labels is not None and data.num_classes >= 2

    def fit(model) -> MixtureSampler:
        codes, labels = encode_codes(model, data.train, limit=PROXY_CODES)
        return fit_mixture(codes, PROXY_COMPONENTS, labels if classes else None,
                           data.class_names if classes else None, covariance=mixture_forms(codes.shape[1])[0],
                           seed=seed)

    fit.description = f"gmm proxy: {PROXY_COMPONENTS} components on up to {PROXY_CODES} training codes"
    return fit


def mixture_forms(latent_dim: int) -> tuple[str, ...]:
    """The covariance forms a gmm fit compares at this latent size."""
    return ("full",) if latent_dim <= FULL_COVARIANCE_MAX_DIM else ("pca", "diag")


def _mixtures(codes, labels, class_names, components, seed, forms=("full",)):
    """({"components": k[, "covariance": form]}, mixture) for each candidate number of components and covariance
    form, one EM fit each (the spreads reuse it); a k capped by the codes to a mixture already fitted is left out."""
    for form in forms:
        fitted_sizes = set()
        for k in components:
            fitted = fit_mixture(codes, k, labels, class_names, covariance=form, seed=seed)
            if fitted.settings["components"] in fitted_sizes:
                continue
            fitted_sizes.add(fitted.settings["components"])
            yield ({"components": k} if forms == ("full",) else {"components": k, "covariance": form}), fitted


def describe(chosen: dict) -> str:
    """A candidate's settings in words: '50 components, spread 1.2' or 'spread 1.0'."""
    parts = [f"{chosen['components']} components"] if "components" in chosen else []
    if "covariance" in chosen:
        parts.append(f"{chosen['covariance']} covariances")
    return ", ".join(parts + [f"spread {chosen['spread']}"])


def _guard_level(row: dict | None) -> int:
    """2: the samples sit as far from the training images as the validation images and as the model's
    reconstructions of them (each to ``MEMORISATION_FLOOR``); 1: one of the two; 0: neither."""
    if row is None:
        return 0
    return sum(row.get(key, 1.0) >= MEMORISATION_FLOOR for key in ("memorisation_ratio_pixels", "memorisation_ratio"))


def _better(row: dict, best: dict | None) -> bool:
    """Candidates that copy less by the guard's references come first, then the lower validation FID."""
    if row["validation_fid"] is None:
        return best is None
    if best is None or best["validation_fid"] is None:
        return True
    if _guard_level(row) != _guard_level(best):
        return _guard_level(row) > _guard_level(best)
    return row["validation_fid"] < best["validation_fid"]


def _spread(split, n: int):
    from ..data import spaced_images

    if len(split) == 0:
        return torch.zeros(0), None
    return spaced_images(split, n)


__all__ = ["FlowSampler", "KIND_NAMES", "LatentSampler", "MixtureSampler", "SAMPLER_KINDS", "TwoStageSampler",
           "describe", "encode_codes", "fit_flow", "fit_mixture", "fit_sampler", "fit_two_stage", "load",
           "load_sampler", "proxy_mixture"]
