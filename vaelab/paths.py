"""Where vaelab keeps what it can rebuild: decoded folders (``data/pixel_cache``) and domain classifiers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$VAELAB_CACHE, else $XDG_CACHE_HOME/vaelab, else ~/.cache/vaelab (%LOCALAPPDATA%\\vaelab on Windows)."""
    if os.environ.get("VAELAB_CACHE"):
        return Path(os.environ["VAELAB_CACHE"]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "vaelab"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaelab"
