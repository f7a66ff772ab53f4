"""``python -m vaelab`` (also what ``torchrun -m vaelab train ...`` runs)."""

from .cli import app

app()
