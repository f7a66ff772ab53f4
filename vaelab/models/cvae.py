"""Conditional VAE (Sohn et al. 2015; as used in the Göttingen seminar "Generating Realistic Images using
Deep Learning", 2017).

The one-hot class label is given to both halves: as constant extra channels of the encoder's input, so
q(z | x, y), and concatenated to z before the decoder, so p(x | z, y). The prior stays N(0, I); sampling a
chosen class is decoding z ~ N(0, I) together with that class.

Two bugs of the Keras example the seminar used are not copied: z is drawn as mu + exp(1/2 log s^2) * eps
(the example used exp(log s^2)), and the KL is summed over latent dimensions (the example averaged it),
both in ``GaussianLatentModel`` / ``kl_standard_normal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .blocks import one_hot_channels
from .vae import VAE, VAEConfig


@dataclass
class CVAEConfig(VAEConfig):
    name: str = "cvae"
    num_classes: int | None = None  # filled in from the data's labels when training starts

    def validate(self) -> None:
        super().validate()
        if self.arch != "dcgan":
            raise ConfigError("the conditional VAE uses model.arch=dcgan")


class CVAE(VAE):
    registry_name = "cvae"
    config_class = CVAEConfig
    is_conditional = True

    def condition_size(self) -> int:
        return self.config.num_classes

    def _labels(self, y: torch.Tensor | None, n: int) -> torch.Tensor:
        if y is None:
            raise ValueError("the conditional VAE needs class labels y, shape (B,)")
        y = torch.as_tensor(y, device=self.device).long().view(-1)
        if y.numel() == 1 and n > 1:
            y = y.expand(n)
        return y

    def encode(self, x, y=None):
        """x (B, C, H, W), y (B,) -> mu, logvar (B, latent_dim) of q(z | x, y)."""
        y = self._labels(y, x.shape[0])
        planes = one_hot_channels(y, self.config.num_classes, x.shape[-1]).to(x.dtype)
        return super().encode(torch.cat([x, planes], dim=1))

    def decoder_output(self, z, y=None):
        """z (B, latent_dim), y (B,) -> logits (B, C, H, W) of p(x | z, y)."""
        y = self._labels(y, z.shape[0])
        onehot = torch.nn.functional.one_hot(y, self.config.num_classes).to(z.dtype)
        return self.decoder(torch.cat([z, onehot], dim=1))
