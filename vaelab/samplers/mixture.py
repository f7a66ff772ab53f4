"""A Gaussian mixture on the training codes (ex-post density estimation: Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders", ICLR, section 4), optionally one mixture per class (labels for free).

The prior N(0, I) is not where the encoder put the training images: their codes form clusters with holes between
them, and prior draws in the holes decode to blends. A mixture fitted to the codes puts the draws back where the
decoder was trained. Fitted with scikit-learn's EM; sampled with torch alone from the saved tensors:
z = mu_k + spread * L_k eps, k ~ Categorical(pi), L_k the Cholesky factor of component k's covariance.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import VaelabError
from .base import LatentSampler


class MixtureSampler(LatentSampler):
    kind = "gmm"

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, scale_tril: torch.Tensor,
                 component_class: torch.Tensor, class_names: list[str] | None = None, settings: dict | None = None):
        """weights (K,) summing to 1; means (K, D); scale_tril (K, D, D); component_class (K,) int64, -1 without
        classes. ``settings["spread"]`` scales every component's standard deviations (1: as fitted)."""
        super().__init__(means.shape[1], settings)
        self.weights, self.means, self.scale_tril = weights.double(), means.double(), scale_tril.double()
        self.component_class = component_class.long()
        self._class_names = list(class_names or [])
        self.settings.setdefault("spread", 1.0)

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    def sample(self, n, generator=None, y=None):
        spread = float(self.settings["spread"])
        if y is None:
            picks = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
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
        eps = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)
        z = self.means[picks] + spread * (self.scale_tril[picks] @ eps.unsqueeze(-1)).squeeze(-1)
        return z.float()

    def with_spread(self, spread: float) -> "MixtureSampler":
        """The same mixture drawing with standard deviations scaled by ``spread``."""
        return MixtureSampler(self.weights, self.means, self.scale_tril, self.component_class, self._class_names,
                              {**self.settings, "spread": spread})

    def tensors(self):
        return {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril,
                "component_class": self.component_class}

    @classmethod
    def from_tensors(cls, tensors, meta):
        shapes_fit = (tensors["means"].ndim == 2 and tensors["scale_tril"].shape == (*tensors["means"].shape,
                                                                                   tensors["means"].shape[1])
                      and tensors["weights"].shape == tensors["means"].shape[:1]
                      and tensors["component_class"].shape == tensors["weights"].shape)
        if not shapes_fit:
            raise ValueError("the mixture's tensors do not fit together")
        settings = dict(meta.get("settings", {}))
        return cls(tensors["weights"], tensors["means"], tensors["scale_tril"], tensors["component_class"],
                   settings.get("class_names"), settings)


def fit_mixture(codes: torch.Tensor, components: int, labels: torch.Tensor | None = None,
                class_names: list[str] | None = None, covariance: str = "full", spread: float = 1.0,
                seed: int = 0) -> MixtureSampler:
    """EM fit of ``components`` Gaussians on codes (N, D); with ``labels`` (N,), one mixture per class with
    ``components`` split over the classes by their share of the codes (at least one each), weighted by that share.
    Each class's mixture is capped at a tenth of its codes, so no component is fitted on a handful of them."""
    from sklearn.mixture import GaussianMixture

    x = codes.double().cpu().numpy()
    groups = [(-1, np.arange(len(x)))] if labels is None else \
        [(int(c), np.flatnonzero(labels.cpu().numpy() == c)) for c in labels.unique().tolist()]
    # a class with a single code gets one Gaussian there, with the spread of all the codes (the identity for one code)
    pooled = np.diag(x.var(0) + 1e-5) if len(x) >= 2 else np.eye(x.shape[1])
    weights, means, trils, owners = [], [], [], []
    for c, idx in groups:
        share = len(idx) / len(x)
        k = max(1, min(round(components * share), len(idx) // 10 or 1))
        if len(idx) < 2:
            w, mu, cov = np.ones(1), x[idx], pooled[None]
        else:
            gmm = GaussianMixture(k, covariance_type=covariance, random_state=seed, reg_covar=1e-5, max_iter=100)
            gmm.fit(x[idx])
            w, mu, cov = gmm.weights_, gmm.means_, gmm.covariances_
            if covariance == "diag":
                cov = np.stack([np.diag(v) for v in cov])
        weights.append(torch.from_numpy(w) * share)
        means.append(torch.from_numpy(mu))
        trils.append(torch.linalg.cholesky(torch.from_numpy(cov)))
        owners.append(torch.full((len(w),), c, dtype=torch.long))
    weights = torch.cat(weights)
    settings = {"components": int(len(weights)), "requested_components": components, "covariance": covariance,
                "spread": spread, "per_class": labels is not None, "fitted_on": int(len(x)),
                "class_names": list(class_names or []) if labels is not None else []}
    return MixtureSampler(weights / weights.sum(), torch.cat(means), torch.cat(trils), torch.cat(owners),
                          settings["class_names"], settings)
