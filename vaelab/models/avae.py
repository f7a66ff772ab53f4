"""AVAE (Khan, Hayat, Barnes 2018, "Adversarial Training of Variational Auto-encoders for High Fidelity Image
Generation", arXiv 1804.10323), and the paper's ablation BEGAN* (the same discriminator and controller with a
plain generator).

Generator = a VAE: encoder Enc(x) -> (mu, sigma), decoder Dec(z). Discriminator = a BEGAN-style auto-encoder
AE = D_dec(D_enc(x)) (3x3 convs with ELU, no BatchNorm, strided subsampling, nearest-neighbour upsampling), whose
hidden code has the latent size. With x_v = Dec(z_v), z_v ~ q(z|x), and x_g = Dec(z_g), z_g ~ N(0, I):
- (2)  L_e = (1/|x|) ||x - x_v||_1                 (3)  L_n = KL(N(mu, sigma) || N(0, I))
- (7)  L_d = mean|x - AE(x)|,  L_g = mean|x_g - AE(x_g)|,  L_v = mean|x_v - AE(x_v)|
       (the paper's text writes L_g with x in place of x_g; this is the BEGAN form it means)
- (9)  L_s = (1/|z_d|) ||z_d - z'_v||_1 between D_enc(x) and D_enc(x_v)
- (13) L_dis = L_d - k_{t-1} (L_g + alpha L_v)   (``fake_margin`` m: k_{t-1} min(L_g + alpha L_v, m), EBGAN's hinge)
- (14) L_gen = L_g + alpha L_v + beta L_s + gamma L_e   (``adv_weight`` a (L_g + alpha L_v);
       + ``latent_regression_weight`` L_z, L_z = -log q(z_g | x_g) / |z|)
- (15) L_enc = L_n + beta L_s + gamma L_e   (``kl_weight`` on L_n)
- (11) e_t = eta L_d - (L_g + alpha L_v)   (the BEGAN sign; the paper's text has a sign slip)
- (12) k_t = clip(k_{t-1} + l1 e_t + l2 (e_t - e_{t-1}) + l3 (e_t + e_{t-2} - 2 e_{t-1}), 0, 1)
- convergence M = L_d + |eta L_d - L_g - alpha L_v|, logged with k_t every step.
Update order (Algorithm 1): encoder on L_enc, decoder on L_gen, controller, discriminator on L_dis; all
gradients come from one forward pass, and L_dis uses k_{t-1}, so the controller's place in the order is exact.

The networks work on images scaled to [-1, 1] and end linear, as BEGAN's do (``to_signed`` / ``to_image``).
The KL of (3) is averaged over latent dimensions (``kl_reduction: mean``), the 1/|z| normalisation the paper gives
L_s in (9) and L_e in (2). Knobs beyond the paper, all at the paper's value by default (the mnist5k presets set the
ones their measurements support, each with its measurement): ``kl_weight`` on L_n in (15), ``adv_weight`` on
L_g + alpha L_v in (14), ``pull_away_weight`` (EBGAN's repelling term on the codes of x_g), ``fake_margin``
(EBGAN's hinge on the fake term of (13)), ``discriminator_lr`` (two time-scale updates),
``latent_regression_weight`` (InfoGAN's -log q(z_g | Dec(z_g)), added to (14)), and ``arch: dcgan`` with
``generator_norm``. (A KL warm-up, InfoVAE's aggregate MMD and a weight on L_g alone were measured and removed: no
preset used them; docs/avae-probes.md, sessions 14-15.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..augment import as_configured, validate_augment
from ..errors import ConfigError
from ..losses import kl_standard_normal, log_normal
from .base import GaussianLatentModel, GenerativeModel
from .blocks import BeganDecoder, BeganEncoder, ConvDecoder, ConvEncoder, running_batch_statistics


class PIDController:
    """k_t of eq. (12): k <- clip(k + l1 e_t + l2 (e_t - e_{t-1}) + l3 (e_t + e_{t-2} - 2 e_{t-1}), 0, 1)."""

    def __init__(self, lambdas: list[float], k: float = 0.0):
        self.l1, self.l2, self.l3 = lambdas
        self.k, self.e1, self.e2 = k, 0.0, 0.0  # k_{t-1}, e_{t-1}, e_{t-2}

    def update(self, e: float) -> float:
        k = self.k + self.l1 * e + self.l2 * (e - self.e1) + self.l3 * (e + self.e2 - 2 * self.e1)
        self.k = min(max(k, 0.0), 1.0)
        self.e2, self.e1 = self.e1, e
        return self.k

    def state(self) -> dict:
        return {"k": self.k, "e1": self.e1, "e2": self.e2}

    def load(self, state: dict) -> None:
        self.k, self.e1, self.e2 = float(state["k"]), float(state["e1"]), float(state["e2"])


def encoder_net(c, out_dim: int, levels: int, norm: str = "none") -> nn.Module:
    """x (B, C, S, S) -> (B, out_dim) in the config's architecture (``arch``: began or dcgan; ``norm`` for dcgan)."""
    if c.arch == "dcgan":
        body = ConvEncoder(c.channels, c.image_size, c.widths, norm, slope=0.2)
        return nn.Sequential(body, nn.Linear(body.out_features, out_dim))
    return BeganEncoder(c.channels, c.image_size, c.filters, levels, out_dim)


def decoder_net(c, in_dim: int, levels: int, norm: str = "none") -> nn.Module:
    """code (B, in_dim) -> linear output (B, C, S, S) in the config's architecture."""
    if c.arch == "dcgan":
        return ConvDecoder(in_dim, c.channels, c.image_size, c.widths, norm, slope=0.2)
    return BeganDecoder(in_dim, c.channels, c.image_size, c.filters, levels)


class AutoencoderDiscriminator(nn.Module):
    """BEGAN discriminator: x (B, C, S, S) -> (code (B, code_dim), reconstruction (B, C, S, S))."""

    def __init__(self, c, levels: int):
        super().__init__()
        self.encoder = encoder_net(c, c.latent_dim, levels)
        self.decoder = decoder_net(c, c.latent_dim, levels)

    def forward(self, x):
        code = self.encoder(x)
        return code, self.decoder(code)


def pull_away(codes: torch.Tensor) -> torch.Tensor:
    """EBGAN's pull-away term (Zhao et al. 2017, eq. 7): the mean squared cosine similarity between the
    discriminator codes (B, D) of different generated images. Scalar in [0, 1]; 1 when every code points the same way.

    An auto-encoder discriminator scores each image on its own, so nothing in BEGAN's losses sees a batch of identical
    samples; this term does (mnist5k: every BEGAN* sample the same "7" after 7,262 steps without it, RESULTS.md)."""
    b = codes.shape[0]
    if b < 2:
        return codes.new_zeros((), dtype=torch.float32)
    unit = nn.functional.normalize(codes.float(), dim=1)
    cosines = unit @ unit.T
    return (cosines.pow(2).sum() - b) / (b * (b - 1))  # the diagonal is 1


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1], the range BEGAN trains in (Berthelot et al. 2017), same shape."""
    return 2 * x - 1


def to_image(out: torch.Tensor) -> torch.Tensor:
    """A linear network output in the [-1, 1] data range -> float32 image in [0, 1], same shape.

    The networks end linear, as BEGAN's do: a sigmoid on digits that are ~80% black saturates at the black
    background, where its gradient vanishes, and the generator settles on all-black images that the auto-encoder
    reconstructs perfectly (mnist5k, 3 minutes: every sample black, L_g 0.03 against L_d 0.13, RESULTS.md).
    """
    return ((out.float() + 1) / 2).clamp(0, 1)


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over everything: (1/|a|) ||a - b||_1 averaged over the batch. Scalar."""
    return (a.float() - b.float()).abs().mean()


@dataclass
class AVAEConfig:
    name: str = "avae"
    image_size: int | None = None
    channels: int | None = None
    latent_dim: int = 64  # also the discriminator's hidden code size
    # began: the BEGAN blocks of the paper (3x3 convs at every resolution, ELU); dcgan: 4x4 stride-2 convs of the
    # given widths, LeakyReLU (a fraction of the FLOPs: see the mnist5k preset)
    arch: Literal["began", "dcgan"] = "began"
    filters: int = 64  # n of the BEGAN blocks
    levels: int | None = None  # factor-2 resamplings; None: as many as keep image_size / 2^levels >= 7
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # arch dcgan
    # arch dcgan: BatchNorm in the encoder and decoder (the discriminator has none, as in BEGAN)
    generator_norm: Literal["none", "batch"] = "none"
    alpha: float = 0.3
    beta: float = 0.1
    gamma: float = 0.1
    eta: float = 0.5
    lambdas: list[float] = field(default_factory=lambda: [1e-3, 1e-5, 1e-5])
    k0: float = 0.0
    # EBGAN's margin m (Zhao et al. 2017, eq. 1) on the fake term of L_dis: k min(L_g + alpha L_v, m), i.e.
    # k [m - L_fake]^+ up to a constant; the discriminator stops pushing fakes away once they are m off. None: the
    # paper's unbounded term, which only the controller's k_t -> 0 holds back
    fake_margin: float | None = None
    kl_reduction: Literal["mean", "sum"] = "mean"
    kl_weight: float = 1.0  # the weight of L_n in (15): 1 in the paper
    # latent regression (InfoGAN's bound on I(z; Dec(z)), Chen et al. 2016, eq. 4; BicycleGAN's cLR): a weight on
    # L_z = -log q(z_g | x_g) / |z|, the encoder's density at the prior sample z_g for its own decoding x_g, added to
    # the decoder's (14). It asks the decoder to draw, for z_g, an image the encoder maps back to z_g, i.e. the digit
    # whose posteriors hold z_g, not whichever digit the discriminator finds cheapest. 0: the paper's (14)
    latent_regression_weight: float = 0.0
    adv_weight: float = 1.0  # the weight of the adversarial L_g + alpha L_v in (14): 1 in the paper
    pull_away_weight: float = 0.0  # EBGAN's pull-away term on the codes of x_g, added to (14); not in the paper
    lr: float = 5e-5
    # the discriminator's own rate (two time-scale updates, Heusel et al. 2017); None: lr, as in the paper
    discriminator_lr: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    # DiffAugment policy on every image the discriminator sees, real and generated alike (vaelab/augment.py; ""
    # off), and the training-split size below which it applies (None: any)
    augment: str = ""
    augment_below_images: int | None = None

    def validate(self) -> None:
        validate_began_controlled(self)
        if self.adv_weight < 0:
            raise ConfigError(f"model.adv_weight must be 0 or more, got {self.adv_weight}")
        if self.latent_regression_weight < 0:
            raise ConfigError(f"model.latent_regression_weight must be 0 (off) or more, got "
                              f"{self.latent_regression_weight}")


def validate_began_controlled(c) -> None:
    """The checks AVAEConfig and BEGANStarConfig share: the controller, the sizes, the rates and the margin."""
    validate_augment(c)
    if len(c.lambdas) != 3:
        raise ConfigError(f"model.lambdas must be three numbers (l1, l2, l3), got {c.lambdas}")
    if c.latent_dim < 1 or c.filters < 1:
        raise ConfigError("model.latent_dim and model.filters must be at least 1")
    for name in ("lr", "discriminator_lr", "fake_margin"):
        value = getattr(c, name)
        if value is not None and not value > 0:
            raise ConfigError(f"model.{name} must be positive (or null), got {value}")


def default_levels(image_size: int) -> int:
    levels = 0
    while image_size % 2 ** (levels + 1) == 0 and image_size // 2 ** (levels + 1) >= 7:
        levels += 1
    return levels


class _BeganControlled:
    """What AVAE and BEGAN* share: the auto-encoder discriminator, the controller and its checkpointed state."""

    def _build_discriminator(self, c):
        self.levels = c.levels if c.levels is not None else default_levels(c.image_size)
        self.discriminator = AutoencoderDiscriminator(c, self.levels)
        self.controller = PIDController(list(c.lambdas), c.k0)

    def _adam(self, params, discriminator: bool = False) -> torch.optim.Adam:
        c = self.config
        rate = c.discriminator_lr if discriminator and c.discriminator_lr is not None else c.lr
        return torch.optim.Adam(params, lr=rate, betas=tuple(c.betas))

    def _fake_term(self, fake: torch.Tensor) -> torch.Tensor:
        """The fake energy as L_dis sees it: capped at fake_margin when one is set (no gradient past it)."""
        m = self.config.fake_margin
        return fake if m is None else fake.clamp(max=m)

    def extra_state(self) -> dict:
        return {"controller": self.controller.state()}

    def load_extra_state(self, state: dict) -> None:
        if "controller" in state:
            self.controller.load(state["controller"])


class AVAE(_BeganControlled, GaussianLatentModel):
    registry_name = "avae"
    config_class = AVAEConfig
    has_likelihood = False  # trained with L1 and adversarial terms; pixel terms below are an evaluation proxy

    def __init__(self, config: AVAEConfig):
        super().__init__(config)
        c = config
        self._build_discriminator(c)
        self.encoder = encoder_net(c, 2 * c.latent_dim, self.levels, c.generator_norm)
        self.decoder = decoder_net(c, c.latent_dim, self.levels, c.generator_norm)

    def configure_optimizers(self):
        return {"encoder": self._adam(self.encoder.parameters()), "decoder": self._adam(self.decoder.parameters()),
                "discriminator": self._adam(self.discriminator.parameters(), discriminator=True)}

    def encode(self, x, y=None):
        """x (B, C, H, W) in [0, 1] -> mu, logvar (B, latent_dim)."""
        return self.split_moments(self.encoder(to_signed(x)))

    def decode(self, z, y=None):
        return to_image(self.decoder(z))

    def nll(self, output, x):
        """Pixel sum of absolute errors per image (B,) on the [0, 1] scale: an evaluation proxy, not a likelihood."""
        return (to_image(output) - x.float()).abs().flatten(1).sum(1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term of eqs. (2)-(15) for one batch x (B, C, H, W) in [0, 1], plus e_t and M; scalars, all
        measured on the [-1, 1] scale the networks work in."""
        c = self.config
        x = to_signed(x)
        b = x.shape[0]
        mu, logvar = self.split_moments(self.encoder(x))
        # One decoder pass over z_v ~ q(z|x) and z_g ~ N(0, I), one discriminator pass over x, x_v, x_g: with
        # BatchNorm in the decoder, separate passes normalise the prior batch by its own statistics, and the decoder
        # learned to tell the two apart (reconstructions fine, every prior sample one digit; RESULTS.md)
        z_post, z_prior = self.reparameterize(mu, logvar), torch.randn_like(mu)
        x_v, x_g = self.decoder(torch.cat([z_post, z_prior])).split(b)
        # model.augment: the discriminator sees (and auto-encodes) transformed images; x and x_v alike, since L_s
        # compares their codes
        s_x, s_v = as_configured(torch.cat([x, x_v]), c, pairs=2).split(b)
        s_g = as_configured(x_g, c)
        codes, ae = self.discriminator(torch.cat([s_x, s_v, s_g]))
        (z_d, z_v, code_g), (ae_x, ae_v, ae_g) = codes.split(b), ae.split(b)
        kl = kl_standard_normal(mu, logvar)
        t = {
            "L_e": l1(x, x_v),
            "L_n": (kl / c.latent_dim if c.kl_reduction == "mean" else kl).mean(),
            "L_d": l1(s_x, ae_x),
            "L_g": l1(s_g, ae_g),
            "L_v": l1(s_v, ae_v),
            "L_s": l1(z_d, z_v),
            "L_pt": pull_away(code_g),
        }
        if c.latent_regression_weight > 0:
            with running_batch_statistics(self.encoder):  # x_g's statistics stay out of the real batch's
                mu_g, logvar_g = self.split_moments(self.encoder(x_g))
            t["L_z"] = -log_normal(z_prior, mu_g, logvar_g).mean() / c.latent_dim
        k = self.controller.k
        t["L_dis"] = t["L_d"] - k * self._fake_term(t["L_g"] + c.alpha * t["L_v"])
        t["L_gen"] = c.adv_weight * (t["L_g"] + c.alpha * t["L_v"]) + c.beta * t["L_s"] \
            + c.gamma * t["L_e"] \
            + c.pull_away_weight * t["L_pt"]
        if "L_z" in t:
            t["L_gen"] = t["L_gen"] + c.latent_regression_weight * t["L_z"]
        t["L_enc"] = c.kl_weight * t["L_n"] + c.beta * t["L_s"] + c.gamma * t["L_e"]
        balance = c.eta * t["L_d"] - (t["L_g"] + c.alpha * t["L_v"])
        t["e"] = balance.detach()
        t["M"] = (t["L_d"] + balance.abs()).detach()
        return t

    def training_step(self, batch, ctx):
        t = self.losses(batch["x"])
        ctx.update_many({"encoder": t["L_enc"], "decoder": t["L_gen"], "discriminator": t["L_dis"]}, t)
        k = self.controller.update(float(ctx.mean_over_processes(t["e"])))
        return {**{key: v.detach() for key, v in t.items()}, "k": torch.tensor(k)}


@dataclass
class BEGANStarConfig:
    name: str = "began_star"
    image_size: int | None = None
    channels: int | None = None
    latent_dim: int = 64
    arch: Literal["began", "dcgan"] = "began"
    filters: int = 64
    levels: int | None = None
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    generator_norm: Literal["none", "batch"] = "none"  # arch dcgan: BatchNorm in the generator
    pull_away_weight: float = 0.0  # EBGAN's pull-away term on the codes of x_g, added to L_G; not in the paper
    eta: float = 0.5
    lambdas: list[float] = field(default_factory=lambda: [1e-3, 1e-5, 1e-5])
    k0: float = 0.0
    fake_margin: float | None = None  # as AVAEConfig.fake_margin; None: the paper's unbounded term
    lr: float = 5e-5
    discriminator_lr: float | None = None  # None: lr, as in the paper
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    # DiffAugment policy on every image the discriminator sees, real and generated alike (vaelab/augment.py; ""
    # off), and the training-split size below which it applies (None: any)
    augment: str = ""
    augment_below_images: int | None = None

    def validate(self) -> None:
        validate_began_controlled(self)


class BEGANStar(_BeganControlled, GenerativeModel):
    registry_name = "began_star"
    """BEGAN* (AVAE paper's ablation): L_D = L_d - k L_g, L_G = L_g, e_t = eta L_d - L_g, the PID controller."""

    config_class = BEGANStarConfig

    def __init__(self, config: BEGANStarConfig):
        super().__init__(config)
        c = config
        self._build_discriminator(c)
        self.generator = decoder_net(c, c.latent_dim, self.levels, c.generator_norm)

    def configure_optimizers(self):
        return {"generator": self._adam(self.generator.parameters()),
                "discriminator": self._adam(self.discriminator.parameters(), discriminator=True)}

    def decode(self, z, y=None):
        return to_image(self.generator(z))

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_d, L_g, the pull-away term, L_G, L_dis, e_t and M for one batch x (B, C, H, W) in [0, 1]; scalars on the
        [-1, 1] scale."""
        c = self.config
        x = to_signed(x)
        x_g = self.generator(torch.randn(x.shape[0], c.latent_dim, device=x.device))
        seen = as_configured(torch.cat([x, x_g]), c)  # model.augment: D auto-encodes the transformed images
        codes, ae = self.discriminator(seen)
        (s_x, s_g), (ae_x, ae_g) = seen.split(x.shape[0]), ae.split(x.shape[0])
        t = {"L_d": l1(s_x, ae_x), "L_g": l1(s_g, ae_g), "L_pt": pull_away(codes[x.shape[0]:])}
        t["L_G"] = t["L_g"] + c.pull_away_weight * t["L_pt"]
        t["L_dis"] = t["L_d"] - self.controller.k * self._fake_term(t["L_g"])
        balance = c.eta * t["L_d"] - t["L_g"]
        t["e"], t["M"] = balance.detach(), (t["L_d"] + balance.abs()).detach()
        return t

    def training_step(self, batch, ctx):
        t = self.losses(batch["x"])
        ctx.update_many({"generator": t["L_G"], "discriminator": t["L_dis"]}, t)
        k = self.controller.update(float(ctx.mean_over_processes(t["e"])))
        return {**{key: v.detach() for key, v in t.items()}, "k": torch.tensor(k)}
