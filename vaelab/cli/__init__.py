"""The ``vaelab`` command: one small function per verb (parse the arguments, call the library, print). The verbs
register on ``app`` in the order ``vaelab --help`` lists them; each imports what it needs when it runs, so that
``vaelab --help`` answers without importing torch."""

from . import training_verbs, generate_verbs, measure_verbs, latent_verbs  # noqa: F401, E402  (registration)
from .app import app

__all__ = ["app"]
