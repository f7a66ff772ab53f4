"""The sampler fit: candidates of a kind's settings, judged on the validation images, guarded against copying.

``fit_sampler(run)`` reads a run folder (its kept weights, the data its config names), encodes up to ``MAX_CODES``
training images (posterior means, spread over the split), fits the candidates on those codes and keeps the one
whose samples score best against the validation images (the best-weights score's FID, drawn from the
``sampler_fit`` seed stream) among those the copy guard (``samplers.guard``) lets through, those as far from the
training images as the validation images themselves first. Where no candidate reaches the validation images, the
smallest fitted density is judged again at the wider spreads ``WIDER_SPREADS`` (more varied draws, further from the
training codes: the record says that the spread was widened). Where the guard refuses every candidate, or there are
no validation images to measure copying against, nothing is kept: the run samples from the prior, and
``sampler-<kind>-refused.json`` says why. The test split is never looked at.

Kinds: ``gmm`` (``mixture``: a Gaussian mixture, one per class where the data have labels); ``flow`` (a masked
autoregressive flow); ``two-stage`` (Dai & Wipf's second-stage VAE). The fitted kinds condition on the class where
the data have labels, so ``--label k`` works for unconditional models too. The network kinds keep the epoch with the
best loss on the validation images' codes; every kind's spread (a factor on its base noise or its components'
standard deviations) is then chosen like the rest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..errors import VaelabError
from .guard import GUARD_SAMPLES, CopyGuard, level, refusal
from .base import LatentSampler, file_sha256, refused_path, sampler_paths
from .flow import FlowSampler, fit_flow
from .mixture import MixtureSampler, fit_mixture
from .two_stage import TwoStageSampler, fit_two_stage

SAMPLER_KINDS = {"gmm": MixtureSampler, "flow": FlowSampler, "two-stage": TwoStageSampler}
# the candidates a gmm fit compares on validation: total components (split over the classes) and spread
GMM_COMPONENTS = (10, 20, 50, 100)
GMM_SPREADS = (1.0, 1.2)
# full covariances up to this latent size (D^2 / 2 numbers per component from a few hundred codes); above it the
# low-rank-plus-diagonal and the diagonal forms (vaelab/samplers/mixture.py), both judged like the rest: a full fit
# at latent 2,000 built 16 GB for 500 draws and did not finish (issue 40)
FULL_COVARIANCE_MAX_DIM = 64
NETWORK_SPREADS = (0.8, 1.0)
MAX_CODES = 20_000  # training images encoded for a fit (spread over the split); enough for these densities
CODES_FLOOR = 2_000  # ... and at least this many where a costly model on a CPU encodes fewer (vaelab.work_size)
# tried only where no candidate's samples sit as far from the training images as the validation images (a small
# folder: GVAE on 350 digits, 0.74-0.84 at spreads 1.0-1.2, 0.92 at 1.5 with 10 components; RESULTS.md)
WIDER_SPREADS = (1.5, 2.0)


@torch.no_grad()
def encode_codes(model, split, limit: int = MAX_CODES, batch: int = 500,
                 what: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Posterior means (N, D) of up to ``limit`` images spread over a split (the rows ``spaced_indices(len(split),
    limit)``), and their labels (N,) or None. The images are read a batch at a time (uint8 until the batch) and
    encoded on the model's device; only the codes are kept. ``what``: a progress line's name (None: silent)."""
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


def fit_sampler(run: str | Path, kind: str = "gmm", weights: str = "best", components: list[int] | None = None,
                spreads: list[float] | None = None, per_class: bool | None = None, seed: int = 0,
                progress: bool = True, device: str | torch.device = "auto") -> LatentSampler | None:
    """Fit sampler ``kind`` for run folder ``run`` (see the module docstring) and save it there bound to the weights
    its codes came from; returns it, or None where the copy guard refused every candidate (the run then samples
    from the prior; ``refused_record(run, kind, weights)`` says why). ``settings["selection"]`` lists every
    candidate with its validation FID and guard statistics, ``settings["chosen"]`` the kept one. ``components``:
    the gmm's candidates; ``spreads``: any kind's. Encoding, sampling and scoring run on ``device``."""
    from ..data import load_data, spaced_indices
    from ..metrics.quality import SampleQuality
    from ..run import load as load_weights, resolve_device
    from ..work_size import afforded, is_costly

    device = resolve_device(device)
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
    judge = SampleQuality(data, cfg.data, n=cfg.train.best_samples, seed=seed, progress=progress, device=device,
                          stream="sampler_fit")
    rows = spaced_indices(len(data.train), afforded(MAX_CODES, model, CODES_FLOOR))
    costly = is_costly(model)  # a costly model on a CPU: every other default size of mixture (each costs a scoring)
    guard = CopyGuard(model, data.train, rows, data.validation, features=judge.embed, progress=progress)
    record = {"kind": kind, "weights": model.weights_file, "seed": seed, "score": judge.settings, "guard": guard.settings,
              "codes": len(rows), "cut_for_cost": costly,
              "rule": f"lowest validation FID among the candidates the copy guard passes (vaelab.samplers.guard), "
                      f"those as far from the training images as the validation images first; where none is, the "
                      f"smallest density at spreads {', '.join(map(str, WIDER_SPREADS))} too; where the guard "
                      f"refuses every candidate, the prior"}
    if not guard.usable:
        return _refuse(run, kind, weights, model, record, "the validation split has fewer than 2 images: nothing to "
                       "measure the candidates' copying against, so no fitted density is trusted", start)
    codes, labels = encode_codes(model, data.train, limit=len(rows),
                                 what="encoding the training images for the sampler fit")
    use_classes = (labels is not None and data.num_classes >= 2) if per_class is None else per_class
    if use_classes and labels is None:
        raise VaelabError(f"a per-class sampler needs class labels, and {data.description} has none")
    class_names = data.class_names if use_classes else None
    labels = labels if use_classes else None
    widen = spreads is None  # the wider spreads are a fallback of the default candidates only
    spreads = list(spreads or (GMM_SPREADS if kind == "gmm" else NETWORK_SPREADS))
    candidates = Candidates(model, judge, guard, kind, seed)
    if kind == "gmm":
        forms = mixture_forms(codes.shape[1])
        sizes = list(components or (GMM_COMPONENTS[::2] if costly else GMM_COMPONENTS))
        if len(forms) > 1:  # the covariance form first, then the sizes in the better one
            candidates.judge(spreads[:1], list(_mixtures(codes, labels, class_names, sizes[:1], seed, forms)))
            form = (candidates.best or candidates.rows[0])["covariance"]
            candidates.judge(spreads[1:], [b for b in candidates.bases if b[0]["covariance"] == form])
            candidates.judge(spreads, list(_mixtures(codes, labels, class_names, sizes[1:], seed, (form,))))
        else:
            candidates.judge(spreads, list(_mixtures(codes, labels, class_names, sizes, seed, forms)))
    else:
        val_codes, val_labels = encode_codes(model, data.validation)
        fit = fit_flow if kind == "flow" else fit_two_stage
        candidates.judge(spreads, [({}, fit(codes, labels, class_names, val_codes, val_labels if use_classes else None,
                                         seed=seed))])
    if widen and level(candidates.best) < 2:
        # the smallest density: at every spread measured it drew furthest from the training images
        smallest = min(candidates.bases, key=lambda b: b[1].settings.get("components", 0))
        print(f"  no candidate's samples sit as far from the training images as the validation images: trying "
              f"{describe({**smallest[0], 'spread': WIDER_SPREADS[0]})} and {WIDER_SPREADS[1]} (more variance "
              f"than the fitted density)", flush=True)
        candidates.judge(WIDER_SPREADS, [smallest], widened=True)
    model.latent_sampler = None
    record["selection"] = candidates.rows
    if candidates.best is None:
        return _refuse(run, kind, weights, model, record, "the copy guard refused every candidate: "
                       + " | ".join(f"{describe(r)}: {r['refused']}" for r in candidates.rows), start)
    chosen = candidates.chosen
    chosen.settings.update({**record, "chosen": candidates.best, "fit_seconds": time.perf_counter() - start})
    chosen.settings["weights_sha256"] = file_sha256(Path(run) / model.weights_file)
    chosen.save(run, weights if weights == "last" else "best", chosen.settings["weights_sha256"])
    refused_path(Path(run), kind, weights).unlink(missing_ok=True)
    return chosen


class Candidates:
    """The candidates judged so far: each row's settings, validation FID and guard statistics (``rows``), the fitted
    densities (``bases``) and the best passing one (``best`` row, ``chosen`` sampler)."""

    def __init__(self, model, quality, guard, kind: str, seed: int):
        self.model, self.quality, self.guard, self.kind, self.seed = model, quality, guard, kind, seed
        self.rows: list[dict] = []
        self.bases: list[tuple[dict, LatentSampler]] = []
        self.best: dict | None = None
        self.chosen: LatentSampler | None = None

    def judge(self, spreads, densities, widened: bool = False) -> None:
        for base, fitted in densities:
            if not any(b[1] is fitted for b in self.bases):
                self.bases.append((base, fitted))
            for spread in spreads:
                sampler = fitted.with_spread(spread)
                row = {**base, "spread": spread, **({"widened": True} if widened else {})}
                row.update(self._measure(sampler))
                reason = refusal(row)
                if reason:
                    row["refused"] = reason
                self.rows.append(row)
                self._say(row)  # each candidate is a long phase at scale: said with or without progress bars
                if _better(row, self.best):
                    self.best, self.chosen = row, sampler

    @torch.no_grad()
    def _measure(self, sampler: LatentSampler) -> dict:
        """Validation FID of the sampler's draws and the guard's statistics of at least GUARD_SAMPLES of them (the
        score's own draws, topped up from the fit's stream: each draw decoded once)."""
        from ..processes import stream_seed

        self.model.latent_sampler = sampler
        kept: list = []
        row = {"validation_fid": self.quality.score(self.model, keep=kept)}
        fake, features = (kept[0]["images"], kept[0]["features"]) if kept else (torch.zeros(0), None)
        more = GUARD_SAMPLES - len(fake)
        if more > 0:
            draws = torch.Generator().manual_seed(stream_seed("sampler_fit", self.seed, 1))
            extra = self.model.sample(more, generator=draws).float().cpu()
            fake = torch.cat([fake, extra])
            features = None if features is None else torch.cat([features, self.quality.embed(extra)])
        row.update(self.guard.measure(fake, features))
        return row

    def _say(self, row: dict) -> None:
        fid = row["validation_fid"] if row["validation_fid"] is not None else float("nan")
        print(f"  {self.kind} {describe(row)}: validation FID {fid:.2f}; median distance to the training images "
              f"{row['memorisation_ratio_pixels']:.2f}x the validation images', {row['memorisation_ratio']:.2f}x "
              f"their reconstructions'; copy share {row['copy_share']:.1%}"
              + (f" (features {row['copy_share_features']:.1%})" if "copy_share_features" in row else "")
              + (f": refused ({row['refused']})" if "refused" in row else ""), flush=True)


def _better(row: dict, best: dict | None) -> bool:
    """A refused candidate never; then those the guard ranks higher (``guard.level``); then the lower FID."""
    rank = level(row)
    if rank == 0 or row["validation_fid"] is None:
        return False
    if best is None:
        return True
    if rank != level(best):
        return rank > level(best)
    return row["validation_fid"] < best["validation_fid"]


def _refuse(run, kind: str, weights: str, model, record: dict, reason: str, start: float) -> None:
    """No fitted density is kept: the sampler files for these weights are removed (a stale one would decode
    codes nothing vouched for) and the record says why; the run samples from the prior."""
    folder = Path(run)
    which = weights if weights == "last" else "best"
    for path in sampler_paths(folder, kind, which):
        path.unlink(missing_ok=True)
    record = {**record, "fallback": "prior", "reason": reason, "fit_seconds": time.perf_counter() - start,
              "weights_sha256": file_sha256(folder / model.weights_file)}
    from ..run import atomic_write_text

    atomic_write_text(refused_path(folder, kind, which), json.dumps(record, indent=2) + "\n")
    print(f"no {kind} sampler kept: {reason}. The run samples from the prior N(0, I) "
          f"({refused_path(folder, kind, which).name})", flush=True)
    return None


def refused_record(run: str | Path, kind: str, weights: str = "best") -> dict | None:
    """The record of a fit that kept no density for these weights (``fallback``: prior, ``reason``), or None."""
    path = refused_path(Path(run), kind, weights if weights == "last" else "best")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
