"""The models: one file per paper, plain PyTorch; ``registry`` maps ``model.name`` to its class."""

from .base import GaussianLatentModel, GenerativeModel
from .registry import MODELS, build_model, model_class, model_names

__all__ = ["GaussianLatentModel", "GenerativeModel", "MODELS", "build_model", "model_class", "model_names"]
