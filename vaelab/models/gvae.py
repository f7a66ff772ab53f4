"""GVAE (Sagar 2020, "Generative Variational Autoencoder for High Resolution Image Synthesis").

A VAE encoder and a ResNet generator trained as one network against a Wasserstein critic with gradient penalty.
- Encoder: four 3x3 stride-2 conv stages with BatchNorm and LeakyReLU, then linear heads mu, log s^2.
- Generator (Table 1, at 128 px): fully connected z -> stem x (H/4) x (W/4), two ResNet blocks at each of three
  widths (256, 128, 64) with an upsampling between, then a 3x3 conv to C channels. The paper's stem at 128 px
  (512 -> 256 x 32 x 32) alone holds ~134M weights, so ``stem_channels`` and the widths are parameters.
- Critic (Table 2): conv 64, then per width a ResNet block and 2x average pooling, then fully connected; no
  BatchNorm (it would break the gradient penalty). ``dropout`` switches on the paper's 30% dropout in the blocks.
Losses: encoder + generator minimise -log p(x|z) + KL - adv_weight * (E[D(x_p)] + E[D(x_tilde)]) / 2, with
x_p = G(z), z ~ N(0, I), and x_tilde = G(Enc(x)); the critic minimises the WGAN-GP loss (Gulrajani et al.
2017, eq. 3) with both fakes, lambda = 10, and the generator is updated once every n_critic = 5 critic steps.
The latent-size study (Table 5: z = 100, 500, 1000, 2000) runs with --set model.latent_dim=N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..augment import as_configured, validate_augment
from ..errors import ConfigError
from ..losses import (bernoulli_nll, gaussian_nll, gradient_penalty, kl_standard_normal, wasserstein_critic_loss,
                      wasserstein_g_loss)
from .base import GaussianLatentModel
from .blocks import ResBlock


@dataclass
class GVAEConfig:
    name: str = "gvae"
    image_size: int | None = None
    channels: int | None = None
    latent_dim: int = 100
    encoder_widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    stem_channels: int = 256
    generator_widths: list[int] = field(default_factory=lambda: [256, 128, 64])
    critic_widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    dropout: float = 0.0  # the paper lists 30% dropout in the ResNet blocks: 0.3
    likelihood: Literal["bernoulli", "gaussian"] = "gaussian"
    gaussian_variance: float = 0.5
    adv_weight: float = 1.0
    gp_weight: float = 10.0
    n_critic: int = 5
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    # DiffAugment policy on every image the critic sees, real and fake alike, the gradient penalty's interpolates
    # included (vaelab/augment.py; "" off)
    augment: str = ""
    # augment only a training split of fewer images than this (decided when training starts, then written into
    # config.yaml as augment itself: vaelab/training/data_size.py); None: augment whatever the size
    augment_below_images: int | None = None

    def validate(self) -> None:
        validate_augment(self)
        if len(self.generator_widths) != 3:
            raise ConfigError("model.generator_widths must list the three widths of Table 1, e.g. [256, 128, 64]")
        if self.image_size is not None and self.image_size % 4:
            raise ConfigError(f"GVAE's generator starts at image_size / 4; {self.image_size} is not divisible by 4")
        if self.n_critic < 1 or self.latent_dim < 1:
            raise ConfigError("model.n_critic and model.latent_dim must be at least 1")


class GVAEGenerator(nn.Module):
    """z (B, latent_dim) -> raw output (B, C, H, W) (Table 1)."""

    def __init__(self, latent_dim, channels, image_size, stem, widths, dropout):
        super().__init__()
        self.fc = nn.Linear(latent_dim, stem * (image_size // 4) ** 2)
        self.to_map = nn.Unflatten(1, (stem, image_size // 4, image_size // 4))
        layers: list[nn.Module] = []
        c = stem
        for i, width in enumerate(widths):
            layers += [ResBlock(c, width, dropout=dropout), ResBlock(width, width, dropout=dropout)]
            c = width
            if i < 2:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, channels, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.to_map(self.fc(z)))


class GVAECritic(nn.Module):
    """x (B, C, H, W) -> score (B,) (Table 2), no BatchNorm."""

    def __init__(self, channels, image_size, widths, dropout):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, 1, 1)]
        c, size = widths[0], image_size
        for width in widths:
            layers += [ResBlock(c, width, norm="none", dropout=dropout), nn.AvgPool2d(2)]
            c, size = width, size // 2
        if size < 1:
            raise ConfigError(f"{len(widths)} critic poolings do not fit {image_size} px; use fewer model.critic_widths")
        self.net = nn.Sequential(*layers, nn.LeakyReLU(0.2), nn.Flatten())
        self.fc = nn.Linear(c * size * size, 1)

    def forward(self, x):
        return self.fc(self.net(x)).squeeze(1)


class GVAE(GaussianLatentModel):
    registry_name = "gvae"
    config_class = GVAEConfig

    def __init__(self, config: GVAEConfig):
        super().__init__(config)
        c = config
        layers: list[nn.Module] = []
        ch, size = c.channels, c.image_size
        for width in c.encoder_widths:
            layers += [nn.Conv2d(ch, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True)]
            ch, size = width, (size + 1) // 2
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.to_moments = nn.Linear(ch * size * size, 2 * c.latent_dim)
        self.generator = GVAEGenerator(c.latent_dim, c.channels, c.image_size, c.stem_channels, c.generator_widths, c.dropout)
        self.critic = GVAECritic(c.channels, c.image_size, c.critic_widths, c.dropout)
        self.log_sigma2 = nn.Parameter(torch.tensor(c.gaussian_variance).log(), requires_grad=False)

    def configure_optimizers(self):
        c = self.config
        vae = list(self.encoder.parameters()) + list(self.to_moments.parameters()) + list(self.generator.parameters())
        return {"vae": torch.optim.Adam(vae, lr=c.lr, betas=tuple(c.betas)),
                "critic": torch.optim.Adam(self.critic.parameters(), lr=c.lr, betas=tuple(c.betas))}

    def decoder_output(self, z, y=None):
        return self.generator(z)

    def nll(self, output, x):
        if self.config.likelihood == "bernoulli":
            return bernoulli_nll(output, x)
        return gaussian_nll(torch.sigmoid(output.float()), x, self.log_sigma2)

    def fakes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (mu, logvar (B, latent_dim), raw output of G(z ~ q(z|x)), x_p = G(z ~ N(0, I)) in [0, 1])."""
        mu, logvar = self.encode(x)
        out_tilde = self.generator(self.reparameterize(mu, logvar))
        return mu, logvar, out_tilde, torch.sigmoid(self.generator(torch.randn_like(mu)))

    def _seen(self, images: torch.Tensor) -> torch.Tensor:
        """The images as the critic sees them: transformed by model.augment (DiffAugment), each on its own."""
        return as_configured(images, self.config)

    def critic_loss(self, x: torch.Tensor, x_tilde: torch.Tensor, x_p: torch.Tensor) -> dict[str, torch.Tensor]:
        """WGAN-GP critic loss (Gulrajani et al. eq. 3) with both fakes; the penalty on random interpolates of the
        real images and x_p. Scalars: ``critic_loss``, ``wasserstein``, ``gradient_penalty``."""
        # one pass over the three batches (the critic has no BatchNorm, so this is the same function)
        seen = self._seen(torch.cat([x, x_tilde.detach(), x_p.detach()]))
        d_real, d_tilde, d_p = self.critic(seen).float().split(x.shape[0])
        critic = wasserstein_critic_loss(d_real, 0.5 * (d_tilde.mean() + d_p.mean()))
        real_seen, _, p_seen = seen.split(x.shape[0])
        penalty = gradient_penalty(self.critic, real_seen, p_seen)
        return {"critic_loss": critic + self.config.gp_weight * penalty, "wasserstein": -critic,
                "gradient_penalty": penalty}

    def training_step(self, batch, ctx):
        c = self.config
        x = batch["x"]
        vae_step = (ctx.step + 1) % c.n_critic == 0
        if not vae_step:  # a critic-only step: the fakes need no graph
            with torch.no_grad():
                _, _, out_tilde, x_p = self.fakes(x)
            terms = self.critic_loss(x, torch.sigmoid(out_tilde), x_p)
            ctx.update(terms["critic_loss"], "critic", terms)
            return {k: v.detach() for k, v in terms.items()}
        mu, logvar, out_tilde, x_p = self.fakes(x)
        x_tilde = torch.sigmoid(out_tilde)
        terms = self.critic_loss(x, x_tilde, x_p)
        ctx.update(terms["critic_loss"], "critic", terms)
        nll = self.nll(out_tilde, x).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        adv = 0.5 * wasserstein_g_loss(self.critic(self._seen(torch.cat([x_tilde, x_p]))))  # both fakes' mean score
        vae_loss = nll + kl + c.adv_weight * adv
        ctx.update(vae_loss, "vae", {"nll": nll, "kl": kl, "g_adv": adv})
        return {**{k: v.detach() for k, v in terms.items()},
                "nll": nll.detach(), "kl": kl.detach(), "g_adv": adv.detach(), "vae_loss": vae_loss.detach()}
