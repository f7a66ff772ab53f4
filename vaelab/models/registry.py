"""model.name -> model class: every model vaelab can build, in one explicit table."""

from __future__ import annotations

from ..errors import ConfigError
from .avae import AVAE, BEGANStar
from .base import GenerativeModel
from .cvae import CVAE
from .gans import ACGAN, DCGAN, WGANGP
from .gvae import GVAE
from .ssim_vae import SSIMVAE
from .vae import VAE
from .vaegan import VAEGAN

MODELS: dict[str, type[GenerativeModel]] = {
    cls.registry_name: cls for cls in (VAE, CVAE, SSIMVAE, VAEGAN, GVAE, AVAE, BEGANStar, DCGAN, WGANGP, ACGAN)
}


def model_names() -> list[str]:
    return sorted(MODELS)


def model_class(name: str) -> type[GenerativeModel]:
    if name not in MODELS:
        raise ConfigError(f"unknown model.name {name!r}; known models: {', '.join(model_names())}")
    return MODELS[name]


def build_model(config) -> GenerativeModel:
    """The model of a model config (its ``name`` picks the class)."""
    return model_class(config.name)(config)
