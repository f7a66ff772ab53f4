"""The model contract.

Every model is an ``nn.Module`` built from its config dataclass. All models have ``decode`` and ``sample``;
models with an encoder add ``encode``, ``reconstruct``, ``elbo`` and ``log_likelihood``. Each model owns
its losses and the order of its updates in ``training_step``; the trainer owns devices, precision,
checkpoints and logs, and hands the model an ``UpdateContext`` (vaelab/training/updates.py) whose
``update(loss, optimizer_name)`` / ``update_many({name: loss})`` do backward, gradient sync across processes,
clipping and the optimizer steps. A model's ``registry_name`` is its ``model.name`` in configs
(vaelab/models/registry.py).
Images leave a model as float32 in [0, 1], NCHW.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import kl_standard_normal, log_normal, log_standard_normal

if TYPE_CHECKING:  # the trainer's side of the contract (vaelab/training/updates.py); models never import it
    from ..training.updates import UpdateContext


class GenerativeModel(nn.Module):
    config_class: type
    registry_name: str = ""
    has_encoder: bool = False
    has_likelihood: bool = False  # elbo/log_likelihood are true bounds on log p(x) (not so for an SSIM loss)
    is_conditional: bool = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        if getattr(config, "image_size", 0) is None or getattr(config, "channels", 0) is None:
            raise ConfigError("model.image_size and model.channels must be set (training fills them from the data)")
        if self.is_conditional and (not config.num_classes or config.num_classes < 2):
            raise ConfigError("model.num_classes must be set (training fills it from the data's class labels)")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.image_size, self.config.image_size)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def training_step(self, batch: dict, ctx: "UpdateContext") -> dict[str, torch.Tensor]:
        """One training step on ``batch`` (``x``: (B, C, H, W) in [0, 1], ``y``: (B,) or None); returns detached losses."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    # a density fitted on the training codes (vaelab.samplers), attached by vaelab.load; None: the prior N(0, I)
    latent_sampler = None

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images: (n, C, H, W) in [0, 1], with z from ``latent_sampler`` where one is attached, else from
        the prior. Conditional models draw classes ``y`` (n,), uniformly at random when ``y`` is None; an
        unconditional model takes ``y`` only from a per-class sampler (which then draws each z from its class)."""
        if self.latent_sampler is None:
            if y is not None and not self.is_conditional:
                raise ValueError("classes y need a conditional model or a per-class sampler")
            z = torch.randn(n, self.config.latent_dim, generator=generator, device="cpu").to(self.device)
            if self.is_conditional and y is None:
                y = torch.randint(self.config.num_classes, (n,), generator=generator).to(self.device)
            return self.decode_in_chunks(z, y)
        if self.is_conditional and y is None:
            y = torch.randint(self.config.num_classes, (n,), generator=generator).to(self.device)
        per_class = bool(self.latent_sampler.class_names)
        if y is not None and not per_class and not self.is_conditional:  # never drop the classes asked for
            raise ValueError("classes y need a conditional model or a per-class sampler; this model's sampler was "
                             "fitted without classes")
        z = self.latent_sampler.sample(n, generator=generator, y=None if y is None or not per_class else y.cpu())
        return self.decode_in_chunks(z.to(self.device), y if self.is_conditional else None)

    def decode_in_chunks(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``decode`` of codes z (n, D) a chunk of images at a time: a generator's activations grow with the image
        (500 draws at once through the 128 px GVAE generator held 14 GB); the latents are drawn before, so the
        images do not depend on the chunking. Chunks of ``2**20`` pixel values' worth of images, at least 64."""
        c, size = self.config.channels, self.config.image_size
        chunk = max(64, 2**20 // (c * size * size))
        if len(z) <= chunk:
            return self.decode(z, y)
        return torch.cat([self.decode(z[i : i + chunk], None if y is None else y[i : i + chunk])
                          for i in range(0, len(z), chunk)])

    def extra_state(self) -> dict:
        """Training state beyond parameters and optimizers (a controller, say), saved in checkpoints."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


class GaussianLatentModel(GenerativeModel):
    """A model with a Gaussian encoder q(z|x) = N(mu, diag(exp(logvar))) and a N(0, I) prior.

    Subclasses provide ``nll`` (-log p(x|z) per image from the decoder's raw output) and either the modules
    ``encoder``, ``to_moments`` and ``decoder`` (the default ``encode`` / ``decoder_output`` below) or their own
    ``encode`` and ``decoder_output``; ELBO, reconstruction and the importance-weighted bound follow. The
    config holds ``logvar_min`` / ``logvar_max``, the safe range the encoder's log-variance is clamped to.
    """

    has_encoder = True
    has_likelihood = True

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mu, logvar, each (B, latent_dim)."""
        return self.split_moments(self.to_moments(self.encoder(x)))

    def split_moments(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2 * latent_dim) -> mu, logvar (clamped to [logvar_min, logvar_max]), each (B, latent_dim)."""
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def decoder_output(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent_dim) -> raw decoder output (logits), (B, C, H, W)."""
        return self.decoder(z)

    def nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per image from the decoder's raw output: (B,)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.decoder_output(z, y).float())

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: (B, C, H, W) -> (B, C, H, W) in [0, 1] (decoded in chunks)."""
        mu, _ = self.encode(x, y)
        return self.decode_in_chunks(mu, y)

    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One-sample ELBO terms per image: ``nll`` = -log p(x|z), ``kl`` = KL(q(z|x) || p(z)), each (B,)."""
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        return {"nll": self.nll(self.decoder_output(z, y), x), "kl": kl_standard_normal(mu, logvar)}

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ELBO per image in nats (B,), with its ``nll`` and ``kl`` terms."""
        terms = self.elbo_terms(x, y)
        return {"elbo": -(terms["nll"] + terms["kl"]), **terms}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, y: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) with ``k`` samples from q(z|x) (Burda et al. 2016, eq. 8).

        log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k. (B, C, H, W) -> (B,) nats.
        Samples are drawn in chunks of at most ``chunk`` decoded images per pass.
        """
        mu, logvar = (t.float() for t in self.encode(x, y))
        b = x.shape[0]
        per_pass = max(1, chunk // b)
        log_w = []
        for start in range(0, k, per_pass):
            m = min(per_pass, k - start)
            eps = torch.randn(m, *mu.shape, device=mu.device)
            z = mu + torch.exp(0.5 * logvar) * eps  # (m, B, D)
            flat_z = z.reshape(m * b, -1)
            x_rep = x.unsqueeze(0).expand(m, *x.shape).reshape(m * b, *x.shape[1:])
            y_rep = None if y is None else y.unsqueeze(0).expand(m, b).reshape(-1)
            log_px_z = -self.nll(self.decoder_output(flat_z, y_rep), x_rep).view(m, b)
            log_w.append(log_px_z + log_standard_normal(z) - log_normal(z, mu, logvar))
        return torch.logsumexp(torch.cat(log_w, 0), dim=0) - math.log(k)
