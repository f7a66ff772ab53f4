"""vaelab: train, compare, evaluate and explore VAE-family image generators."""

from .config import Config, load_config
from .errors import VaelabError
from .run import RunFolder, load

__version__ = "0.1.0"
__all__ = ["Config", "RunFolder", "VaelabError", "load", "load_config", "__version__"]
