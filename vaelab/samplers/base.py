"""The sampler contract and its files: a fitted density on a trained encoder's codes, saved beside the weights.

A sampler draws latents z (n, latent_dim) for the decoder in place of the prior N(0, I). Its tensors live in
``RUN/sampler-<kind>.safetensors`` and its settings in ``RUN/sampler-<kind>.json``, which also holds the SHA-256 of
the tensor file: nothing is unpickled, and a tensor file changed after fitting is refused like damaged weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import RunFolderError
from ..run import atomic_write, atomic_write_text


class LatentSampler:
    """A density over latent codes. ``sample(n, generator, y)`` -> z float32 (n, latent_dim) on the CPU.

    ``y`` (n,) asks for classes: a sampler fitted per class draws each z from its class's density (labels for free,
    also for an unconditional model); one without classes refuses ``y`` unless the model is conditional (then its
    decoder takes the class and z is drawn from the one density)."""

    kind = ""

    def __init__(self, latent_dim: int, settings: dict | None = None):
        self.latent_dim = latent_dim
        self.settings = dict(settings or {})

    @property
    def class_names(self) -> list[str]:
        return []

    def sample(self, n: int, generator: torch.Generator | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """What ``from_tensors`` needs to rebuild the sampler."""
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "LatentSampler":
        raise NotImplementedError

    # files ----------------------------------------------------------------------------------------------
    def save(self, run: str | Path) -> Path:
        """Write ``sampler-<kind>.safetensors`` and ``.json`` into run folder ``run``; returns the JSON's path."""
        from safetensors.torch import save_file

        folder = Path(run)
        tensors_path, meta_path = sampler_paths(folder, self.kind)
        state = {k: v.detach().contiguous().cpu() for k, v in self.tensors().items()}
        atomic_write(tensors_path, lambda tmp: save_file(state, tmp, metadata={"kind": self.kind}))
        meta = {"kind": self.kind, "latent_dim": self.latent_dim, "settings": self.settings,
                "sha256": _sha256(tensors_path)}
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        return meta_path


def sampler_paths(folder: Path, kind: str) -> tuple[Path, Path]:
    return folder / f"sampler-{kind}.safetensors", folder / f"sampler-{kind}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sampler_files(folder: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a saved sampler, checked: the JSON parses, the tensor file is a safetensors file with the
    SHA-256 the JSON recorded. A RunFolderError otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors_path, meta_path = sampler_paths(folder, kind)
    if not meta_path.is_file() or not tensors_path.is_file():
        raise RunFolderError(f"{folder} has no fitted '{kind}' sampler ({meta_path.name} and {tensors_path.name}); "
                             f"fit one with `vaelab fit-sampler {folder} --sampler {kind}`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        raise RunFolderError(f"{meta_path} is damaged ({exc}); refit with `vaelab fit-sampler {folder} --sampler "
                             f"{kind}`") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind or not isinstance(meta.get("sha256"), str):
        raise RunFolderError(f"{meta_path} is not a vaelab '{kind}' sampler; refit with `vaelab fit-sampler {folder} "
                             f"--sampler {kind}`")
    if _sha256(tensors_path) != meta["sha256"]:
        raise RunFolderError(f"{tensors_path} was changed after it was fitted (its SHA-256 is not the one "
                             f"{meta_path.name} recorded); refit with `vaelab fit-sampler {folder} --sampler {kind}`")
    try:
        tensors = load_file(tensors_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunFolderError(f"{tensors_path} is damaged or not a safetensors file ({exc})") from None
    return tensors, meta
