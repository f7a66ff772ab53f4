"""Deep convolutional VAE with SSIM and colour losses ("Deep convolutional VAE to generate winged horses").

Encoder: 4x4 stride-2 convs, each followed by BatchNorm and LeakyReLU, then two linear heads (mu, log s^2).
Decoder: a linear layer, then 4x4 stride-2 transposed convs with BatchNorm and LeakyReLU, sigmoid out.

Loss per image = D * [w_ssim * L_SSIM + w_colour * L_colour] + beta * KL, with D = C * H * W pixels:
- L_SSIM = 1 - SSIM(x_hat, x) (Gaussian window 11, sigma 1.5, data range 1; torchmetrics, differentiable);
- L_colour = mean squared error between AvgPool-to-3x3 of x_hat and of x, per colour channel.
``recon_loss: mse`` replaces the bracket by the per-pixel MSE (so D * MSE = the sum of squared errors), which is
the paper's baseline. Scaling the bracket by D puts the reconstruction on the same per-image scale as the KL
(summed over latent dims); with the bare bracket (at most ~1) a summed KL wins and the VAE collapses to one
blurry mean image, the failure seen in other toolkits' SSIM VAEs on MNIST.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import colour_loss, kl_standard_normal, ssim_loss
from .base import GaussianLatentModel
from .blocks import ConvDecoder, ConvEncoder


@dataclass
class SSIMVAEConfig:
    name: str = "ssim_vae"
    image_size: int | None = None
    channels: int | None = None
    latent_dim: int = 128
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    padding: int = 1  # 0 reproduces the paper's unpadded 96 -> 47 -> 22 -> 10 -> 4 at 96 px
    leaky_slope: float = 0.2
    recon_loss: Literal["mse", "ssim", "ssim+colour"] = "ssim+colour"
    ssim_weight: float = 1.0
    colour_weight: float = 1.0
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    colour_grid: int = 3
    beta: float = 1.0
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def validate(self) -> None:
        if self.latent_dim < 1 or not self.widths or min(self.widths) < 1:
            raise ConfigError("model.latent_dim and model.widths must be positive")
        if self.ssim_window % 2 == 0 or self.ssim_window < 3:
            raise ConfigError(f"model.ssim_window must be an odd number >= 3, got {self.ssim_window}")
        if self.image_size is not None and self.recon_loss != "mse" and self.image_size < self.ssim_window:
            raise ConfigError(f"model.ssim_window={self.ssim_window} is larger than the {self.image_size} px images; "
                              "lower it (3-7 for 28 px digits)")


class SSIMVAE(GaussianLatentModel):
    registry_name = "ssim_vae"
    config_class = SSIMVAEConfig

    def __init__(self, config: SSIMVAEConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(c.channels, c.image_size, c.widths, "batch", c.leaky_slope, padding=c.padding, norm_first=True)
        self.to_moments = nn.Linear(self.encoder.out_features, 2 * c.latent_dim)
        self.decoder = ConvDecoder(c.latent_dim, c.channels, c.image_size, c.widths, "batch", padding=c.padding, slope=c.leaky_slope)

    @property
    def has_likelihood(self) -> bool:
        return self.config.recon_loss == "mse"

    def configure_optimizers(self):
        return {"vae": torch.optim.Adam(self.parameters(), lr=self.config.lr, betas=tuple(self.config.betas))}

    def recon_loss(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(D * [w_ssim L_SSIM + w_colour L_colour] or D * MSE, per image (B,); the unscaled terms, each (B,))."""
        c = self.config
        if c.recon_loss == "mse":
            terms = {"mse": (x_hat.float() - x.float()).pow(2).flatten(1).mean(1)}
        else:
            terms = {"ssim": ssim_loss(x_hat, x, c.ssim_window, c.ssim_sigma)}
            if c.recon_loss == "ssim+colour":
                terms["colour"] = colour_loss(x_hat, x, c.colour_grid)
        weights = {"mse": 1.0, "ssim": c.ssim_weight, "colour": c.colour_weight}
        pixels = math.prod(x.shape[1:])
        return pixels * sum(weights[k] * v for k, v in terms.items()), terms

    def nll(self, output, x):
        """The reconstruction loss per image (B,); with recon_loss=mse it is -log N(x | x_hat, 1/2), a true NLL."""
        total, _ = self.recon_loss(torch.sigmoid(output.float()), x)
        if self.config.recon_loss == "mse":  # sum of squared errors + the Gaussian's constant
            total = total + 0.5 * math.prod(x.shape[1:]) * math.log(math.pi)
        return total

    def training_step(self, batch, ctx):
        x = batch["x"]
        mu, logvar = self.encode(x)
        x_hat = torch.sigmoid(self.decoder_output(self.reparameterize(mu, logvar)).float())
        recon, terms = self.recon_loss(x_hat, x)
        recon, kl = recon.mean(), kl_standard_normal(mu, logvar).mean()
        loss = recon + self.config.beta * kl
        ctx.update(loss, "vae", {"recon": recon, "kl": kl})
        return {"loss": loss.detach(), "kl": kl.detach(), **{k: v.mean().detach() for k, v in terms.items()}}
