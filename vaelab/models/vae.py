"""The convolutional VAE (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

Loss (eq. 10 of the paper, negated): -ELBO = -E_q[log p(x|z)] + beta * KL(q(z|x) || N(0, I)), with the KL in
closed form (appendix B) and one reparameterised sample z = mu + sigma * eps (eq. 4/5).

Two architectures:
- ``dcgan``: strided 4x4 convs with BatchNorm and LeakyReLU, mirrored by transposed convs (any image size).
- ``wss18``: the Wolfram Summer School 2018 MNIST model (see the preset ``vae-wss18-mnist``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import bernoulli_nll, gaussian_nll, kl_standard_normal
from .base import GaussianLatentModel
from .blocks import ConvDecoder, ConvEncoder


@dataclass
class VAEConfig:
    name: str = "vae"
    arch: Literal["dcgan", "wss18"] = "dcgan"
    image_size: int | None = None  # filled in from the data when training starts
    channels: int | None = None  # filled in from the data when training starts
    latent_dim: int = 16
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # conv widths, one stride-2 stage each
    norm: Literal["batch", "none"] = "batch"
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    gaussian_variance: float = 0.5  # fixed sigma^2 of p(x|z); 0.5 makes -log p = sum of squared errors + const
    learn_variance: bool = False  # learn one shared log sigma^2 instead (sigma-VAE, Rybkin et al. 2021)
    beta: float = 1.0  # weight of the KL (beta-VAE, Higgins et al. 2017); evaluation always reports beta = 1
    logvar_min: float = -30.0  # encoder log-variance is clamped here for stability
    logvar_max: float = 20.0
    leaky_slope: float = 0.2
    dropout: float = 0.0
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0

    def validate(self) -> None:
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be at least 1, got {self.latent_dim}")
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"model.widths must be a non-empty list of positive ints, got {self.widths}")
        if self.gaussian_variance <= 0:
            raise ConfigError(f"model.gaussian_variance must be positive, got {self.gaussian_variance}")
        if self.lr <= 0:
            raise ConfigError(f"model.lr must be positive, got {self.lr}")
        if self.arch == "wss18" and (self.image_size, self.channels) not in ((None, None), (28, 1)):
            raise ConfigError("model.arch=wss18 is the MNIST model of its paper and takes only 28x28 grayscale images "
                              "(data.image_size=28, data.channels=1); use --set model.arch=dcgan for other images")


class WSS18Encoder(nn.Module):
    """3 convs, 64 filters, 4x4, strides 2, 2, 1, padding 2, LeakyReLU(0.3) + dropout 0.5: (B,1,28,28) -> (B, 5184)."""

    def __init__(self, slope: float, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, stride in ((1, 2), (64, 2), (64, 1)):
            layers += [nn.Conv2d(c_in, 64, 4, stride, 2), nn.LeakyReLU(slope), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers, nn.Flatten())  # 28 -> 15 -> 8 -> 9; 64 * 9 * 9 = 5184
        self.out_features = 5184

    def forward(self, x):
        return self.net(x)


class WSS18Decoder(nn.Module):
    """z -> linear 25 -> 49 (LeakyReLU) -> 1x7x7 -> 3 transposed convs (64, 4x4, strides 2, 1, 1, ReLU) -> linear 784.

    The original used "same" padding; the two stride-1 transposed convs use padding 1 then 2 (14 -> 15 -> 14),
    which keeps the 14x14 map of "same" padding with symmetric PyTorch padding.
    """

    def __init__(self, latent_dim: int, slope: float):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(latent_dim, 25), nn.LeakyReLU(slope), nn.Linear(25, 49), nn.LeakyReLU(slope))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(1, 64, 4, 2, 1), nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(64, 64, 4, 1, 1), nn.ReLU(),  # 14 -> 15
            nn.ConvTranspose2d(64, 64, 4, 1, 2), nn.ReLU(),  # 15 -> 14
            nn.Flatten(),
            nn.Linear(64 * 14 * 14, 784),
        )

    def forward(self, z):
        return self.deconv(self.fc(z).view(-1, 1, 7, 7)).view(-1, 1, 28, 28)


class VAE(GaussianLatentModel):
    registry_name = "vae"
    config_class = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        if c.arch == "wss18":
            if (c.image_size, c.channels) != (28, 1):
                raise ConfigError(
                    f"model.arch=wss18 takes 28x28 grayscale images, got {c.channels}x{c.image_size}x{c.image_size}; "
                    "use model.arch=dcgan"
                )
            self.encoder = WSS18Encoder(c.leaky_slope, c.dropout)
            self.decoder = WSS18Decoder(c.latent_dim, c.leaky_slope)
        else:
            extra = self.condition_size()
            self.encoder = ConvEncoder(c.channels + extra, c.image_size, c.widths, c.norm, c.leaky_slope, c.dropout)
            self.decoder = ConvDecoder(c.latent_dim + extra, c.channels, c.image_size, c.widths, c.norm)
        # One linear layer gives both heads; WSS18's "log sigma = 0.5 * linear" is the same as logvar = linear.
        self.to_moments = nn.Linear(self.encoder.out_features, 2 * c.latent_dim)
        self.log_sigma2 = nn.Parameter(torch.tensor(math.log(c.gaussian_variance)), requires_grad=c.learn_variance)

    def condition_size(self) -> int:
        """Extra encoder channels and decoder inputs for a condition (the conditional VAE's one-hot label)."""
        return 0

    def configure_optimizers(self):
        c = self.config
        return {"vae": torch.optim.Adam(self.parameters(), lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)}

    def nll(self, output, x):
        if self.config.likelihood == "bernoulli":
            return bernoulli_nll(output, x)
        return gaussian_nll(torch.sigmoid(output.float()), x, self.log_sigma2)

    def training_step(self, batch, ctx):
        x, y = batch["x"], (batch["y"] if self.is_conditional else None)
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        nll = self.nll(self.decoder_output(z, y), x).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        loss = nll + self.config.beta * kl
        ctx.update(loss, "vae", {"nll": nll, "kl": kl})
        return {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.detach()}
