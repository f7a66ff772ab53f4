"""Errors a user can act on. The CLI prints these as one message, never a traceback."""


class VaelabError(Exception):
    """Base class: the message says what was wrong, where, and how to fix it."""


class ConfigError(VaelabError):
    """A preset, config file or ``--set`` override is invalid."""


class DataError(VaelabError):
    """A dataset is missing, empty, unreadable or has the wrong shape."""


class RunFolderError(VaelabError):
    """A run folder is missing, incomplete, from another model, or its files are damaged."""


class TrainingDiverged(VaelabError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""
