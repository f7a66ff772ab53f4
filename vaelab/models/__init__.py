"""Models, one file per paper; ``base`` holds the contract and the registry."""

from .base import GaussianLatentModel, GenerativeModel, build_model, model_class, model_names

__all__ = ["GaussianLatentModel", "GenerativeModel", "build_model", "model_class", "model_names"]
