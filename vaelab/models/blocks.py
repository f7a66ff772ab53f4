"""Building blocks shared by the models: strided 4x4 conv stacks that work at any image size."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError


def downsampled_sizes(image_size: int, stages: int, padding: int = 1) -> list[int]:
    """Spatial sizes through ``stages`` 4x4 stride-2 convs: s -> floor((s + 2p - 4) / 2) + 1. Length stages + 1."""
    sizes = [image_size]
    for _ in range(stages):
        sizes.append((sizes[-1] + 2 * padding - 4) // 2 + 1)
    if min(sizes) < 1:
        raise ConfigError(
            f"image size {image_size} is too small for {stages} stride-2 stages (it would shrink to {sizes}); "
            f"use fewer model.widths or a larger data.image_size"
        )
    return sizes


def norm_2d(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


@contextmanager
def running_batch_statistics(module: nn.Module):
    """Inside, the BatchNorm layers of ``module`` normalise with their running statistics and leave them as they are
    (gradients still flow): a pass over other images (a model's own samples) neither mixes its statistics into the
    real batch's nor updates the running averages."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


class ConvEncoder(nn.Module):
    """x (B, C, S, S) -> features (B, widths[-1] * s * s) through len(widths) 4x4 stride-2 convs.

    DCGAN layout by default: no normalisation on the first conv (``norm_first`` adds it), ``norm`` on the
    others, LeakyReLU after each.
    """

    def __init__(self, channels: int, image_size: int, widths: list[int], norm: str = "batch",
                 slope: float = 0.2, dropout: float = 0.0, padding: int = 1, norm_first: bool = False):
        super().__init__()
        self.sizes = downsampled_sizes(image_size, len(widths), padding)
        layers: list[nn.Module] = []
        c_in = channels
        for i, width in enumerate(widths):
            normed = norm == "batch" and (i > 0 or norm_first)
            layers.append(nn.Conv2d(c_in, width, 4, 2, padding, bias=not normed))
            if normed:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(slope, inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = width
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)
        self.out_features = widths[-1] * self.sizes[-1] ** 2

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """z (B, in_features) -> (B, C, S, S) raw output: linear to widths[-1] x s x s, then 4x4 stride-2 transposed convs.

    The transposed convs use output_padding to land exactly on the encoder's sizes in reverse, so odd sizes
    come back: 28 -> 14 -> 7 -> 3 returns as 3 -> 7 -> 14 -> 28, and unpadded 96 -> 47 -> 22 -> 10 -> 4 as
    4 -> 10 -> 22 -> 47 -> 96. Activation: ReLU (DCGAN), or LeakyReLU when ``slope`` is given.
    """

    def __init__(self, in_features: int, channels: int, image_size: int, widths: list[int], norm: str = "batch",
                 padding: int = 1, slope: float | None = None):
        super().__init__()
        sizes = downsampled_sizes(image_size, len(widths), padding)
        act = (lambda: nn.ReLU(inplace=True)) if slope is None else (lambda: nn.LeakyReLU(slope, inplace=True))
        self.fc = nn.Sequential(nn.Linear(in_features, widths[-1] * sizes[-1] ** 2), act())
        self.to_map = nn.Unflatten(1, (widths[-1], sizes[-1], sizes[-1]))
        layers: list[nn.Module] = []
        rev = list(reversed(widths))
        for i, width in enumerate(rev):
            s_in, s_out = sizes[-1 - i], sizes[-2 - i]
            c_out = rev[i + 1] if i + 1 < len(rev) else channels
            last = i + 1 == len(rev)
            output_padding = s_out - (2 * s_in + 2 - 2 * padding)
            layers.append(nn.ConvTranspose2d(width, c_out, 4, 2, padding, output_padding=output_padding,
                                             bias=last or norm != "batch"))
            if not last:
                layers += [norm_2d(norm, c_out), act()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.to_map(self.fc(z)))


def one_hot_channels(y: torch.Tensor, num_classes: int, size: int) -> torch.Tensor:
    """Labels (B,) -> constant one-hot planes (B, num_classes, size, size), to concatenate to an image."""
    onehot = nn.functional.one_hot(y, num_classes).float()
    return onehot[:, :, None, None].expand(-1, -1, size, size)


class ResBlock(nn.Module):
    """conv3x3, BN, ReLU, conv3x3 (+ dropout when set) with a shortcut (1x1 conv when widths differ). GVAE Table 1/2."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=norm != "batch"), norm_2d(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1), nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.shortcut(x) + self.body(x)


def began_levels(image_size: int, levels: int) -> int:
    """The base size of a BEGAN-style stack with ``levels`` factor-2 resamplings; the size must divide evenly."""
    base = image_size // 2**levels
    if levels < 0 or base < 2 or base * 2**levels != image_size:
        raise ConfigError(
            f"image size {image_size} cannot be halved {levels} times down to an integer size >= 2; "
            f"set model.levels so that image_size / 2^levels is a whole number (28 px: levels=2; 64 px: 3)"
        )
    return base


class BeganEncoder(nn.Module):
    """x (B, C, S, S) -> code (B, code_dim): BEGAN layout, 3x3 convs with ELU, no BatchNorm, strided subsampling.

    Widths grow n, 2n, 3n, ... per level (Berthelot et al. 2017, fig. 1).
    """

    def __init__(self, channels: int, image_size: int, n: int, levels: int, code_dim: int):
        super().__init__()
        base = began_levels(image_size, levels)
        layers: list[nn.Module] = [nn.Conv2d(channels, n, 3, 1, 1), nn.ELU()]
        c = n
        for level in range(levels + 1):
            width = n * (level + 1)
            layers += [nn.Conv2d(c, width, 3, 1, 1), nn.ELU(), nn.Conv2d(width, width, 3, 1, 1), nn.ELU()]
            c = width
            if level < levels:  # strided subsampling to the next level's width
                layers += [nn.Conv2d(c, n * (level + 2), 3, 2, 1), nn.ELU()]
                c = n * (level + 2)
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(c * base * base, code_dim)

    def forward(self, x):
        return self.fc(self.net(x))


class BeganDecoder(nn.Module):
    """code (B, code_dim) -> (B, C, S, S) raw output: FC to n x b x b, then 3x3 conv/ELU pairs with nearest upsampling."""

    def __init__(self, code_dim: int, channels: int, image_size: int, n: int, levels: int):
        super().__init__()
        base = began_levels(image_size, levels)
        self.fc = nn.Linear(code_dim, n * base * base)
        self.to_map = nn.Unflatten(1, (n, base, base))
        layers: list[nn.Module] = []
        for level in range(levels + 1):
            layers += [nn.Conv2d(n, n, 3, 1, 1), nn.ELU(), nn.Conv2d(n, n, 3, 1, 1), nn.ELU()]
            if level < levels:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.net = nn.Sequential(*layers, nn.Conv2d(n, channels, 3, 1, 1))

    def forward(self, code):
        return self.net(self.to_map(self.fc(code)))
