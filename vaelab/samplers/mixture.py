"""A Gaussian mixture on the training codes (ex-post density estimation: Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders", ICLR, section 4), optionally one mixture per class (labels for free).

The prior N(0, I) is not where the encoder put the training images: their codes form clusters with holes between
them, and prior draws in the holes decode to blends. A mixture fitted to the codes puts the draws back where the
decoder was trained. Fitted with scikit-learn's EM; sampled with torch alone from the saved tensors.

Three covariance forms, so that a fit works at any latent size (a latent of 2,000 is a setting the GVAE paper
sweeps):
- ``full``: z = mu_k + spread * L_k eps, L_k the Cholesky factor of component k's covariance (D x D each: for
  small latents, where a few dozen codes per component still estimate D^2 / 2 numbers);
- ``diag``: z = mu_k + spread * sigma_k * eps, independent dimensions (D numbers per component);
- ``pca`` (low rank plus diagonal): the codes' top ``PCA_RANK`` principal directions B (D x r) carry a full-covariance
  mixture, the rest an independent Gaussian per dimension: z = c + B (mu_k + spread * L_k eps) + spread * s * eps',
  with c the codes' mean and s the residual's standard deviation per dimension (probabilistic PCA's shape,
  Tipping & Bishop 1999, with a mixture in the subspace).
Sampling never builds an (n, D, D) tensor: draws are grouped by component (memory n x D plus one factor).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import VaelabError
from .base import LatentSampler

COVARIANCES = ("full", "diag", "pca")
PCA_RANK = 64  # principal directions the pca form models with full covariances (the rest: a diagonal)
EM_MAX_ITER = 100  # EM's iterations at most, per class and candidate (its time bound with the codes' cap)


class MixtureSampler(LatentSampler):
    kind = "gmm"

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, scale_tril: torch.Tensor,
                 component_class: torch.Tensor, class_names: list[str] | None = None, settings: dict | None = None,
                 projection: dict[str, torch.Tensor] | None = None):
        """weights (K,) summing to 1; means (K, r); scale_tril (K, r, r) lower-triangular factors, or (K, r) standard
        deviations of independent dimensions (diag); component_class (K,) int64, -1 without classes. ``projection``
        (the pca form): {"center": (D,), "basis": (D, r), "residual_scale": (D,)}; None: r = D.
        ``settings["spread"]`` scales every component's standard deviations (1: as fitted)."""
        latent_dim = means.shape[1] if projection is None else projection["center"].shape[0]
        super().__init__(latent_dim, settings)
        self.weights, self.means, self.scale_tril = weights.double(), means.double(), scale_tril.double()
        self.component_class = component_class.long()
        self.projection = None if projection is None else {k: v.double() for k, v in projection.items()}
        self._class_names = list(class_names or [])
        self.settings.setdefault("spread", 1.0)

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    def _picks(self, n, generator, y):
        if y is None:
            return torch.multinomial(self.weights, n, replacement=True, generator=generator)
        y = torch.as_tensor(y).cpu().long()
        picks = torch.empty(n, dtype=torch.long)
        for c in y.unique().tolist():
            own = (self.component_class == c).nonzero().flatten()
            if len(own) == 0:
                raise VaelabError(f"the mixture has no codes of class {c} to draw from (its training split held "
                                  f"none); ask for another class")
            rows = (y == c).nonzero().flatten()
            chosen = torch.multinomial(self.weights[own], len(rows), replacement=True, generator=generator)
            picks[rows] = own[chosen]
        return picks

    def sample(self, n, generator=None, y=None):
        spread = float(self.settings["spread"])
        picks = self._picks(n, generator, y)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        if self.scale_tril.ndim == 2:  # diag: (n, r) * (n, r)
            offsets = self.scale_tril[picks] * eps
        else:  # one (r, r) factor at a time, never (n, r, r)
            offsets = torch.empty_like(eps)
            for k in picks.unique().tolist():
                rows = (picks == k).nonzero().flatten()
                offsets[rows] = eps[rows] @ self.scale_tril[k].T
        z = self.means[picks] + spread * offsets
        if self.projection is not None:
            p = self.projection
            residual = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)
            z = p["center"] + z @ p["basis"].T + spread * p["residual_scale"] * residual
        return z.float()

    def with_spread(self, spread: float) -> "MixtureSampler":
        """The same mixture drawing with standard deviations scaled by ``spread``."""
        return MixtureSampler(self.weights, self.means, self.scale_tril, self.component_class, self._class_names,
                              {**self.settings, "spread": spread}, self.projection)

    def tensors(self):
        out = {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril,
               "component_class": self.component_class}
        if self.projection is not None:
            out.update({f"projection.{k}": v for k, v in self.projection.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors, meta):
        means, factors, weights = tensors["means"], tensors["scale_tril"], tensors["weights"]
        projection = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("projection.")} or None
        r = means.shape[1] if means.ndim == 2 else -1
        shapes_fit = (means.ndim == 2 and factors.shape in ((*means.shape, r), tuple(means.shape))
                      and weights.shape == means.shape[:1] and tensors["component_class"].shape == weights.shape)
        if projection is not None:
            d = projection.get("center", torch.zeros(0)).shape
            shapes_fit = shapes_fit and set(projection) == {"center", "basis", "residual_scale"} and len(d) == 1 \
                and projection["basis"].shape == (d[0], r) and projection["residual_scale"].shape == d
        if not shapes_fit:
            raise ValueError("the mixture's tensors do not fit together")
        settings = dict(meta.get("settings", {}))
        return cls(weights, means, factors, tensors["component_class"], settings.get("class_names"), settings,
                   projection)


def principal_subspace(x: np.ndarray, rank: int) -> dict[str, np.ndarray]:
    """The codes' mean (D,), top ``rank`` principal directions (D, r) and the residual's standard deviation per
    dimension (D,) once those directions are taken out."""
    center = x.mean(0)
    centred = torch.from_numpy(x - center)
    # randomized (Halko et al. 2011): O(N D r) instead of a full SVD's O(N D min(N, D)); seeded, so a fit repeats
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, v = torch.svd_lowrank(centred, q=min(rank + 10, *centred.shape), niter=4)
    basis = v[:, :rank]
    residual = centred - (centred @ basis) @ basis.T
    return {"center": center, "basis": basis.numpy(), "residual_scale": np.sqrt(residual.var(0).numpy() + 1e-8)}


def _within_class_variance(x: np.ndarray, groups) -> np.ndarray:
    """The spread (D,) a class with a single code gets around it: the codes' variance about their own class's mean,
    pooled over the classes with two codes or more. The variance of all the codes would add the distances between
    the classes, and `--label c` would draw other classes' codes. One group of codes: their variance; no two codes
    of any class: the prior's (ones)."""
    deviations = [x[idx] - x[idx].mean(0) for _, idx in groups if len(idx) >= 2]
    if not deviations:
        return np.ones(x.shape[1])
    stacked = np.concatenate(deviations)
    return (stacked**2).sum(0) / max(len(stacked) - len(deviations), 1) + 1e-5


def fit_mixture(codes: torch.Tensor, components: int, labels: torch.Tensor | None = None,
                class_names: list[str] | None = None, covariance: str = "full", spread: float = 1.0,
                seed: int = 0, rank: int = PCA_RANK) -> MixtureSampler:
    """EM fit of ``components`` Gaussians on codes (N, D) with ``covariance`` full, diag or pca (module docstring;
    pca: in the top ``rank`` principal directions); with ``labels`` (N,), one mixture per class with ``components``
    split over the classes by their share of the codes (at least one each), weighted by that share. Each class's
    mixture is capped at a tenth of its codes, so no component is fitted on a handful of them."""
    from sklearn.mixture import GaussianMixture

    if covariance not in COVARIANCES:
        raise VaelabError(f"unknown mixture covariance {covariance!r}; one of {', '.join(COVARIANCES)}")
    x = codes.double().cpu().numpy()
    projection = None
    if covariance == "pca":
        projection = principal_subspace(x, min(rank, x.shape[1], max(1, len(x) - 1)))
        x = (x - projection["center"]) @ projection["basis"]
    groups = [(-1, np.arange(len(x)))] if labels is None else \
        [(int(c), np.flatnonzero(labels.cpu().numpy() == c)) for c in labels.unique().tolist()]
    pooled_var = _within_class_variance(x, groups)
    em_form = "diag" if covariance == "diag" else "full"
    weights, means, factors, owners = [], [], [], []
    for c, idx in groups:
        share = len(idx) / len(x)
        k = max(1, min(round(components * share), len(idx) // 10 or 1))
        if len(idx) < 2:
            w, mu = np.ones(1), x[idx]
            cov = pooled_var[None] if em_form == "diag" else np.diag(pooled_var)[None]
        else:
            gmm = GaussianMixture(k, covariance_type=em_form, random_state=seed, reg_covar=1e-5,
                                  max_iter=EM_MAX_ITER)
            gmm.fit(x[idx])
            w, mu, cov = gmm.weights_, gmm.means_, gmm.covariances_
        weights.append(torch.from_numpy(w) * share)
        means.append(torch.from_numpy(mu))
        factors.append(torch.from_numpy(np.sqrt(cov)) if em_form == "diag" else
                       torch.linalg.cholesky(torch.from_numpy(cov)))
        owners.append(torch.full((len(w),), c, dtype=torch.long))
    weights = torch.cat(weights)
    settings = {"components": int(len(weights)), "requested_components": components, "covariance": covariance,
                "spread": spread, "per_class": labels is not None, "fitted_on": int(len(x)),
                "class_names": list(class_names or []) if labels is not None else []}
    if projection is not None:
        settings["pca_rank"] = int(projection["basis"].shape[1])
        projection = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in projection.items()}
    return MixtureSampler(weights / weights.sum(), torch.cat(means), torch.cat(factors), torch.cat(owners),
                          settings["class_names"], settings, projection)
