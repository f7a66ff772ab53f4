"""Training: the one loop (``Trainer``, ``train``), the update context models order their updates with
(``UpdateContext``), and checkpoints with exact resume and rollback."""

from .checkpoints import Position
from .loop import Trainer, train
from .updates import UpdateContext

__all__ = ["Position", "Trainer", "UpdateContext", "train"]
