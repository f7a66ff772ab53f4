"""Building blocks shared by the models: DCGAN-style strided conv stacks that work at any image size."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError


def downsampled_sizes(image_size: int, stages: int) -> list[int]:
    """Spatial sizes through ``stages`` 4x4 stride-2 padding-1 convs: s -> floor(s / 2). Length stages + 1."""
    sizes = [image_size]
    for _ in range(stages):
        sizes.append(sizes[-1] // 2)
    if sizes[-1] < 1:
        raise ConfigError(
            f"image size {image_size} is too small for {stages} stride-2 stages (it would shrink to {sizes}); "
            f"use fewer model.widths or a larger data.image_size"
        )
    return sizes


def norm_2d(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


class ConvEncoder(nn.Module):
    """x (B, C, S, S) -> features (B, widths[-1] * s * s) through len(widths) 4x4 stride-2 convs.

    DCGAN layout: no normalisation on the first conv, ``norm`` on the others, LeakyReLU after each.
    """

    def __init__(self, channels: int, image_size: int, widths: list[int], norm: str = "batch",
                 slope: float = 0.2, dropout: float = 0.0):
        super().__init__()
        self.sizes = downsampled_sizes(image_size, len(widths))
        layers: list[nn.Module] = []
        c_in = channels
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(c_in, width, 4, 2, 1, bias=(i == 0 or norm != "batch")))
            if i > 0:
                layers.append(norm_2d(norm, width))
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
    """z (B, in_features) -> logits (B, C, S, S): linear to widths[-1] x s x s, then 4x4 stride-2 transposed convs.

    The transposed convs use output_padding to land exactly on the encoder's sizes in reverse, so odd sizes
    such as 28 -> 14 -> 7 -> 3 come back as 3 -> 7 -> 14 -> 28.
    """

    def __init__(self, in_features: int, channels: int, image_size: int, widths: list[int], norm: str = "batch"):
        super().__init__()
        sizes = downsampled_sizes(image_size, len(widths))
        self.start_shape = (widths[-1], sizes[-1], sizes[-1])
        self.fc = nn.Sequential(nn.Linear(in_features, widths[-1] * sizes[-1] ** 2), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        rev = list(reversed(widths))
        for i, width in enumerate(rev):
            s_in, s_out = sizes[-1 - i], sizes[-2 - i]
            c_out = rev[i + 1] if i + 1 < len(rev) else channels
            last = i + 1 == len(rev)
            layers.append(nn.ConvTranspose2d(width, c_out, 4, 2, 1, output_padding=s_out - 2 * s_in,
                                             bias=last or norm != "batch"))
            if not last:
                layers += [norm_2d(norm, c_out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.fc(z).view(-1, *self.start_shape))
