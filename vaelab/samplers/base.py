"""The sampler contract and its files: a fitted density on a trained encoder's codes, saved beside the weights.

A sampler draws latents z (n, latent_dim) for the decoder in place of the prior N(0, I). Its tensors live in
``RUN/sampler-<kind>.safetensors`` and its settings in ``RUN/sampler-<kind>.json`` (the sampler of the run's kept
weights; ``sampler-<kind>-last.*`` the one fitted on its last weights where those were asked for). The JSON holds
the SHA-256 of the weights file whose codes were fitted (``weights_sha256``: loading the sampler with other weights
is refused, so one weights' codes are never decoded by another) and a SHA-256 over the tensor file and the JSON's
own settings: nothing is unpickled, and a tensor file or a setting (a spread, the class names) changed after
fitting is refused like damaged weights.
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
    def save(self, run: str | Path, weights: str = "best", weights_sha256: str | None = None) -> Path:
        """Write the sampler's files for ``weights`` (best | last) into run folder ``run``, bound to the weights
        file of SHA-256 ``weights_sha256``; returns the JSON's path."""
        from safetensors.torch import save_file

        folder = Path(run)
        tensors_path, meta_path = sampler_paths(folder, self.kind, weights)
        state = {k: v.detach().contiguous().cpu() for k, v in self.tensors().items()}
        atomic_write(tensors_path, lambda tmp: save_file(state, tmp, metadata={"kind": self.kind}))
        meta = {"kind": self.kind, "latent_dim": self.latent_dim, "settings": self.settings,
                "weights_sha256": weights_sha256}
        meta["sha256"] = _content_sha256(tensors_path, meta)
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        return meta_path


def sampler_paths(folder: Path, kind: str, weights: str = "best") -> tuple[Path, Path]:
    """(tensors, JSON) of the ``kind`` sampler fitted on the run's ``weights`` (best: the kept ones; last)."""
    stem = f"sampler-{kind}" if weights == "best" else f"sampler-{kind}-{weights}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def refused_path(folder: Path, kind: str, weights: str = "best") -> Path:
    """The record of a ``kind`` fit on the run's ``weights`` whose candidates the copy guard all refused."""
    return folder / (f"sampler-{kind}-refused.json" if weights == "best" else f"sampler-{kind}-{weights}-refused.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_sha256(tensors_path: Path, meta: dict) -> str:
    """SHA-256 over the tensor file and every field of the JSON but this hash (canonical JSON)."""
    fields = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256((file_sha256(tensors_path) + json.dumps(fields, sort_keys=True)).encode()).hexdigest()


def read_sampler_files(folder: Path, kind: str, weights: str = "best") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a saved sampler, checked: the JSON parses, the tensor file is a safetensors file, and
    both are as fitted (the SHA-256 over them the JSON recorded). A RunFolderError otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors_path, meta_path = sampler_paths(folder, kind, weights)
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
    # older files hashed the tensor file alone (and recorded no weights): still read, as fitted
    legacy = "weights_sha256" not in meta and file_sha256(tensors_path) == meta["sha256"]
    if not legacy and _content_sha256(tensors_path, meta) != meta["sha256"]:
        raise RunFolderError(f"{tensors_path} or {meta_path.name} was changed after it was fitted (their SHA-256 is "
                             f"not the one {meta_path.name} recorded); refit with `vaelab fit-sampler {folder} "
                             f"--sampler {kind}`")
    try:
        tensors = load_file(tensors_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunFolderError(f"{tensors_path} is damaged or not a safetensors file ({exc})") from None
    return tensors, meta
