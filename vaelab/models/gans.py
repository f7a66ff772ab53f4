"""GAN baselines the VAE papers compare against. No encoder: no ``encode``, no likelihood.

- DCGAN (Radford et al. 2015): generator of transposed convs + BatchNorm + ReLU, tanh out; discriminator of
  strided convs + BatchNorm (not on the first layer) + LeakyReLU(0.2); Adam lr 2e-4, beta1 0.5.
  Discriminator: max log D(x) + log(1 - D(G(z))); generator: the non-saturating max log D(G(z)).
- WGAN-GP (Gulrajani et al. 2017, Algorithm 1): critic without BatchNorm; critic loss
  E[D(x_fake)] - E[D(x)] + lambda E[(||grad D(x_hat)||_2 - 1)^2] (eq. 3), lambda = 10; the generator is updated
  once every n_critic = 5 critic steps with loss -E[D(G(z))]; Adam lr 1e-4, betas (0.5, 0.9).
- AC-GAN (Odena et al. 2017, eq. 1-2): class-conditional generator G(z, c); the discriminator has a real/fake
  head and a class head and maximises L_S + L_C; the generator maximises L_C - L_S (here in the non-saturating
  form: it maximises log P(S=real | G(z, c)) + log P(C=c | G(z, c))).

One ``training_step`` is one discriminator (critic) update on the batch, followed by a generator update
(every step for DCGAN and AC-GAN, every n_critic-th step for WGAN-GP). Images are in [-1, 1] inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import as_configured, validate_augment
from ..errors import ConfigError
from ..losses import (gradient_penalty, non_saturating_d_loss, non_saturating_g_loss, wasserstein_critic_loss,
                      wasserstein_g_loss)
from .base import GenerativeModel
from .blocks import ConvDecoder, ConvEncoder


@dataclass
class DCGANConfig:
    name: str = "dcgan"
    image_size: int | None = None
    channels: int | None = None
    latent_dim: int = 100
    generator_widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    discriminator_widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    discriminator_norm: str = "batch"  # batch | none
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    # DiffAugment policy on every image the discriminator sees, real and generated alike (vaelab/augment.py; ""
    # off), and the training-split size below which it applies (None: any)
    augment: str = ""
    augment_below_images: int | None = None

    def validate(self) -> None:
        validate_augment(self)
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be at least 1, got {self.latent_dim}")
        if self.discriminator_norm not in ("batch", "none"):
            raise ConfigError("model.discriminator_norm must be batch or none")


@dataclass
class WGANGPConfig(DCGANConfig):
    name: str = "wgan_gp"
    discriminator_norm: str = "none"  # no BatchNorm in a gradient-penalty critic
    gp_weight: float = 10.0
    n_critic: int = 5
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])

    def validate(self) -> None:
        super().validate()
        if self.n_critic < 1:
            raise ConfigError(f"model.n_critic must be at least 1, got {self.n_critic}")


@dataclass
class ACGANConfig(DCGANConfig):
    name: str = "acgan"
    num_classes: int | None = None  # filled in from the data's labels
    class_weight: float = 1.0
    # the discriminator's class head also learns the classes of fakes (Odena et al. 2017: D maximises L_C on both);
    # false: on real images only, so a fake of one class drawn like another is still called the other
    classify_fakes: bool = True


class Discriminator(nn.Module):
    """x (B, C, S, S) -> real/fake logit (B,) and, with ``num_classes``, class logits (B, K)."""

    def __init__(self, channels, image_size, widths, norm, num_classes: int = 0):
        super().__init__()
        self.features = ConvEncoder(channels, image_size, widths, norm, slope=0.2)
        self.real_fake = nn.Linear(self.features.out_features, 1)
        self.classes = nn.Linear(self.features.out_features, num_classes) if num_classes else None

    def forward(self, x):
        return self.real_fake(self.features(x)).squeeze(1)

    def both(self, x):
        h = self.features(x)
        return self.real_fake(h).squeeze(1), self.classes(h)


class DCGAN(GenerativeModel):
    registry_name = "dcgan"
    config_class = DCGANConfig

    def __init__(self, config):
        super().__init__(config)
        c = config
        k = self.condition_size()
        self.generator = ConvDecoder(c.latent_dim + k, c.channels, c.image_size, c.generator_widths, "batch")
        self.discriminator = Discriminator(c.channels, c.image_size, c.discriminator_widths, c.discriminator_norm, k)

    def condition_size(self) -> int:
        return 0

    def configure_optimizers(self):
        c = self.config
        return {
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=tuple(c.betas)),
            "generator": torch.optim.Adam(self.generator.parameters(), lr=c.lr, betas=tuple(c.betas)),
        }

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent_dim) -> images in [-1, 1], (B, C, H, W)."""
        return torch.tanh(self.generator(z))

    def decode(self, z, y=None):
        return (self.generate(z, y).float() + 1) / 2

    def discriminator_loss(self, real, fake, y_real, y_fake) -> dict[str, torch.Tensor]:
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)
        return {"d_loss": non_saturating_d_loss(d_real, d_fake), "d_real": torch.sigmoid(d_real.float()).mean(), "d_fake": torch.sigmoid(d_fake.float()).mean()}

    def generator_loss(self, fake, y_fake) -> dict[str, torch.Tensor]:
        return {"g_loss": non_saturating_g_loss(self.discriminator(fake))}

    def generator_updates_at(self, step: int) -> bool:
        return True

    def training_step(self, batch, ctx):
        real = batch["x"] * 2 - 1
        b = real.shape[0]
        y_real = batch["y"] if self.is_conditional else None
        y_fake = torch.randint(self.config.num_classes, (b,), device=real.device) if self.is_conditional else None
        fake = self.generate(torch.randn(b, self.config.latent_dim, device=real.device), y_fake)
        # the discriminator sees both transformed by model.augment (the gradient penalty's interpolates too)
        d = self.discriminator_loss(as_configured(real, self.config), as_configured(fake.detach(), self.config),
                                    y_real, y_fake)
        ctx.update(d["d_loss"], "discriminator", d)
        out = {k: v.detach() for k, v in d.items()}
        if self.generator_updates_at(ctx.step):
            g = self.generator_loss(as_configured(fake, self.config), y_fake)
            ctx.update(g["g_loss"], "generator", g)
            out.update({k: v.detach() for k, v in g.items()})
        return out



class WGANGP(DCGAN):
    registry_name = "wgan_gp"
    config_class = WGANGPConfig

    def discriminator_loss(self, real, fake, y_real, y_fake):
        critic = wasserstein_critic_loss(self.discriminator(real), self.discriminator(fake))
        penalty = gradient_penalty(self.discriminator, real, fake)
        return {"d_loss": critic + self.config.gp_weight * penalty, "wasserstein": -critic, "gradient_penalty": penalty}

    def generator_loss(self, fake, y_fake):
        return {"g_loss": wasserstein_g_loss(self.discriminator(fake))}

    def generator_updates_at(self, step: int) -> bool:
        return (step + 1) % self.config.n_critic == 0


class ACGAN(DCGAN):
    registry_name = "acgan"
    config_class = ACGANConfig
    is_conditional = True

    def condition_size(self) -> int:
        return self.config.num_classes

    def generate(self, z, y=None):
        if y is None:
            raise ValueError("AC-GAN needs class labels y, shape (B,)")
        y = torch.as_tensor(y, device=z.device).long().view(-1).expand(z.shape[0])
        return torch.tanh(self.generator(torch.cat([z, F.one_hot(y, self.config.num_classes).to(z.dtype)], 1)))

    def discriminator_loss(self, real, fake, y_real, y_fake):
        s_real, c_real = self.discriminator.both(real)
        s_fake, c_fake = self.discriminator.both(fake)
        source = non_saturating_d_loss(s_real, s_fake)  # -L_S
        classes = F.cross_entropy(c_real.float(), y_real)  # -L_C
        if self.config.classify_fakes:
            classes = classes + F.cross_entropy(c_fake.float(), y_fake)
        accuracy = (c_real.argmax(1) == y_real).float().mean()
        return {"d_loss": source + self.config.class_weight * classes, "d_source": source, "d_class": classes,
                "real_class_accuracy": accuracy}

    def generator_loss(self, fake, y_fake):
        s_fake, c_fake = self.discriminator.both(fake)
        source = non_saturating_g_loss(s_fake)
        classes = F.cross_entropy(c_fake.float(), y_fake)
        return {"g_loss": source + self.config.class_weight * classes, "g_source": source, "g_class": classes}
