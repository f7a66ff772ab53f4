"""VAE-GAN (Larsen, Sønderby, Larochelle, Winther 2016, "Autoencoding beyond pixels using a learned similarity metric").

Three networks, one forward pass per step with three samples: x (real), x_tilde = Dec(Enc(x)), x_p = Dec(z),
z ~ N(0, I). The pixel likelihood is replaced by a Gaussian in the features of discriminator layer l:
- L_prior = KL(q(z|x) || N(0, I))                                    (eq. 3 / 9)
- L_llike^Dis_l = 1/2 ||Dis_l(x) - Dis_l(x_tilde)||^2               (eq. 8, -log of a unit-variance Gaussian)
- L_GAN = log D(x) + log(1 - D(x_tilde)) + log(1 - D(x_p))           (eq. 10, fakes detached for the discriminator)
Updates (Algorithm 1): Enc on L_prior + L_llike; Dec on gamma * L_llike - L_GAN (non-saturating: the decoder
maximises log D(x_tilde) + log D(x_p)); Dis on -L_GAN. All three gradients come from the same forward pass.
Optional balancing (from the authors' code): skip the discriminator update while both its real and fake
cross-entropies are below ``balance_margin``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..augment import AdaptiveProbability, diff_augment, validate_augment
from ..errors import ConfigError
from ..losses import kl_standard_normal, logit_bce
from .base import GaussianLatentModel
from .blocks import ConvDecoder, ConvEncoder


@dataclass
class VAEGANConfig:
    name: str = "vaegan"
    image_size: int | None = None
    channels: int | None = None
    latent_dim: int = 128
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])  # encoder and decoder
    discriminator_widths: list[int] = field(default_factory=lambda: [32, 128, 256, 256])
    feature_layer: int = -1  # Dis_l: the output of this conv stage of the discriminator (-1 = the last)
    gamma: float = 1e-6  # weight of L_llike in the decoder loss (the paper's value for CelebA)
    balance_margin: float | None = 0.35  # None: always update the discriminator
    optimizer: str = "rmsprop"  # rmsprop (the paper) | adam
    lr: float = 3e-4
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    # DiffAugment policy on every image the discriminator sees (vaelab/augment.py: color, translation, cutout;
    # comma-separated; "" off); a real image and its reconstruction get the same transform (their features are
    # compared); every image is transformed (DiffAugment), unless augment_target is set (Karras et al. 2020: 0.6):
    # then the share transformed adapts, from 0, to hold the discriminator's mean sign on real images at the target
    # (vaelab.augment.AdaptiveProbability; p can cross [0, 1] in augment_speed_images images)
    augment: str = ""
    augment_target: float | None = None
    augment_speed_images: int = 20_000
    # augment only a training split of fewer images than this (decided when training starts, then written into
    # config.yaml as augment itself: vaelab/training/data_size.py); None: augment whatever the size
    augment_below_images: int | None = None

    def validate(self) -> None:
        validate_augment(self)
        if self.augment_target is not None:
            if not self.augment:
                raise ConfigError("model.augment_target adapts the strength of model.augment, which is empty; set "
                                  "a policy too, e.g. --set model.augment=translation")
            if not -1.0 < self.augment_target < 1.0:
                raise ConfigError(f"model.augment_target is a mean sign of the discriminator on real images, in "
                                  f"(-1, 1) (Karras et al.: 0.6), got {self.augment_target}")
            if self.augment_speed_images < 1:
                raise ConfigError(f"model.augment_speed_images must be >= 1, got {self.augment_speed_images}")
        if self.optimizer not in ("rmsprop", "adam"):
            raise ConfigError(f"model.optimizer must be rmsprop or adam, got {self.optimizer!r}")
        n = len(self.discriminator_widths)
        if not -n <= self.feature_layer < n:
            raise ConfigError(f"model.feature_layer={self.feature_layer} is not a stage of the {n}-stage discriminator")


class FeatureDiscriminator(nn.Module):
    """x (B, C, S, S) -> (features of stage l (B, F), real/fake logit (B,))."""

    def __init__(self, channels, image_size, widths, feature_layer):
        super().__init__()
        encoder = ConvEncoder(channels, image_size, widths, "batch", slope=0.2)
        layers = list(encoder.net.children())[:-1]  # without the Flatten
        ends = [i for i, m in enumerate(layers) if isinstance(m, nn.LeakyReLU)]
        cut = ends[feature_layer] + 1
        self.lower, self.upper = nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:], nn.Flatten())
        self.flatten = nn.Flatten()
        self.head = nn.Linear(encoder.out_features, 1)

    def forward(self, x):
        features = self.lower(x)
        return self.flatten(features), self.head(self.upper(features)).squeeze(1)


class VAEGAN(GaussianLatentModel):
    registry_name = "vaegan"
    config_class = VAEGANConfig
    has_likelihood = False  # the likelihood lives in discriminator features; pixel terms below are a proxy

    def __init__(self, config: VAEGANConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(c.channels, c.image_size, c.widths, "batch", 0.2)
        self.to_moments = nn.Linear(self.encoder.out_features, 2 * c.latent_dim)
        self.decoder = ConvDecoder(c.latent_dim, c.channels, c.image_size, c.widths, "batch")
        self.discriminator = FeatureDiscriminator(c.channels, c.image_size, c.discriminator_widths, c.feature_layer)
        self.adaptive = (AdaptiveProbability(c.augment_target, c.augment_speed_images)
                         if c.augment_target is not None else None)

    @property
    def augment_probability(self) -> float:
        return self.adaptive.p if self.adaptive is not None else 1.0

    def extra_state(self) -> dict:
        return {"augment": self.adaptive.state()} if self.adaptive is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.adaptive is not None and "augment" in state:
            self.adaptive.load(state["augment"])

    def configure_optimizers(self):
        c = self.config
        make = (lambda p: torch.optim.RMSprop(p, lr=c.lr)) if c.optimizer == "rmsprop" else \
            (lambda p: torch.optim.Adam(p, lr=c.lr, betas=(0.5, 0.999)))
        return {
            "encoder": make(list(self.encoder.parameters()) + list(self.to_moments.parameters())),
            "decoder": make(self.decoder.parameters()),
            "discriminator": make(self.discriminator.parameters()),
        }

    def nll(self, output, x):
        """Pixel sum of squared errors per image (B,): a reconstruction proxy for evaluation, not the training loss."""
        return (torch.sigmoid(output.float()) - x.float()).pow(2).flatten(1).sum(1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms of eqs. (3)-(10) for one batch x (B, C, H, W) in [0, 1], and the three networks' losses. Scalars."""
        mu, logvar = self.encode(x)
        x_tilde = torch.sigmoid(self.decoder(self.reparameterize(mu, logvar)))
        x_p = torch.sigmoid(self.decoder(torch.randn_like(mu)))
        seen_real, seen_tilde, seen_p = x, x_tilde, x_p
        if self.config.augment:  # DiffAugment: the discriminator sees every image transformed, real and fake alike
            c = self.config
            p = self.augment_probability
            seen_real, seen_tilde = diff_augment(torch.cat([x, x_tilde]), c.augment, p, pairs=2).chunk(2)
            seen_p = diff_augment(x_p, c.augment, p)
        f_real, d_real = self.discriminator(seen_real)
        f_tilde, d_tilde = self.discriminator(seen_tilde)
        _, d_p = self.discriminator(seen_p)
        t = {"kl": kl_standard_normal(mu, logvar).mean(),
             "llike": 0.5 * (f_real.float() - f_tilde.float()).pow(2).sum(1).mean(),  # eq. 8
             "d_real_loss": logit_bce(d_real, 1.0),
             "d_fake_loss": 0.5 * (logit_bce(d_tilde, 0.0) + logit_bce(d_p, 0.0))}
        t["d_loss"] = t["d_real_loss"] + 2 * t["d_fake_loss"]  # -L_GAN of eq. 10
        t["g_gan"] = logit_bce(d_tilde, 1.0) + logit_bce(d_p, 1.0)  # non-saturating, for the decoder
        t["encoder_loss"] = t["kl"] + t["llike"]
        t["decoder_loss"] = self.config.gamma * t["llike"] + t["g_gan"]
        t["d_real"] = torch.sigmoid(d_real.detach().float()).mean()
        t["d_fake"] = torch.sigmoid(d_p.detach().float()).mean()
        if self.adaptive is not None:  # its r_t
            t["d_real_sign"] = torch.sign(d_real.detach().float()).mean()
        return t

    def training_step(self, batch, ctx):
        c = self.config
        t = self.losses(batch["x"])
        losses = {"encoder": t["encoder_loss"], "decoder": t["decoder_loss"]}
        skip = False
        if c.balance_margin is not None:  # decided on the losses of all processes, so all skip together
            real_fake = ctx.mean_over_processes(torch.stack([t["d_real_loss"], t["d_fake_loss"]]))
            skip = bool((real_fake < c.balance_margin).all())
        if not skip:
            losses["discriminator"] = t["d_loss"]
        ctx.update_many(losses, {k: t[k] for k in ("kl", "llike", "d_loss", "g_gan")})
        keep = ("kl", "llike", "d_loss", "g_gan", "d_real", "d_fake")
        out = {**{k: t[k].detach() for k in keep}, "d_updated": torch.tensor(0.0 if skip else 1.0)}
        if self.adaptive is not None:  # r_t of all processes, so every process moves p alike
            r = float(ctx.mean_over_processes(t["d_real_sign"]))
            out["augment_p"] = torch.tensor(self.adaptive.observe(r, len(batch["x"]) * ctx.world))
        return out

