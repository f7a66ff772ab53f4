"""vaelab: train, compare, evaluate and explore VAE-family image generators.

The public names load on first use, so that ``vaelab --help`` and ``vaelab presets`` answer without importing torch.
"""

from .errors import VaelabError

__version__ = "0.1.0"
__all__ = ["Config", "RunFolder", "VaelabError", "load", "load_config", "train", "__version__"]

_LAZY = {"Config": "config", "load_config": "config", "RunFolder": "run", "load": "samplers", "train": "training"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
