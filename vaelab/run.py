"""The run folder: everything a run made, and the only thing commands after ``train`` read.

    runs/<name>/config.yaml        fully resolved config (enough to rebuild the model)
    runs/<name>/model.safetensors  weights for inference
    runs/<name>/checkpoints/       step-XXXXXXXX.pt training state for resume
    runs/<name>/samples/           sample and reconstruction grids per epoch
    runs/<name>/metrics.jsonl      losses per step and epoch; TensorBoard events beside it
    runs/<name>/summary.json       final numbers (test ELBO, throughput, wall time)

Every file is written to a temporary name in the same folder, flushed to disk, then renamed, so a crash
leaves either the old file or the new one, never half of one. Loading never unpickles code: weights are
safetensors and checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
import yaml

from .errors import RunFolderError

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8,})\.pt$")
# 2: the data have a validation split (data.validation_fraction); a format-1 run trained on those images too, so it
# reads back with validation_fraction 0 (no validation split) rather than one it has seen
FORMAT_VERSION = 2


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; the file is either old or complete, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    weights_path = property(lambda self: self.path / "model.safetensors")
    best_weights_path = property(lambda self: self.path / "model-best.safetensors")
    best_info_path = property(lambda self: self.path / "model-best.json")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    samples_dir = property(lambda self: self.path / "samples")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")

    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> None:
        if not self.path.is_dir():
            raise RunFolderError(f"run folder not found: {self.path}. Train one with `vaelab train --out {self.path}`.")
        if not self.config_path.is_file():
            raise RunFolderError(f"{self.path} is not a vaelab run folder (no config.yaml in it)")

    # config ------------------------------------------------------------------------------------------
    def write_config(self, cfg) -> None:
        from .uris import redact

        data = cfg.to_dict()
        data["train"]["tracker_uri"] = redact(data["train"].get("tracker_uri"))  # credentials never go to disk
        data = {"vaelab_format": FORMAT_VERSION, **data}
        atomic_write_text(self.config_path, yaml.safe_dump(data, sort_keys=False))

    def read_config(self):
        from .config import build_config

        self.require()
        try:
            raw = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as exc:
            raise RunFolderError(f"{self.config_path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise RunFolderError(f"{self.config_path} is not a vaelab config")
        version = raw.pop("vaelab_format", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise RunFolderError(
                f"{self.path} was written by a newer vaelab (run format {version}, this one reads up to "
                f"{FORMAT_VERSION}); upgrade vaelab to use it"
            )
        if version < 2 and isinstance(raw.get("data"), dict):
            raw["data"].setdefault("validation_fraction", 0.0)
        return build_config(raw)

    # weights -----------------------------------------------------------------------------------------
    def save_weights(self, model: torch.nn.Module, best_info: dict | None = None) -> None:
        """model.safetensors; with ``best_info`` (the score and epoch that made them the best so far),
        model-best.safetensors and its model-best.json instead."""
        from safetensors.torch import save_file

        path = self.weights_path if best_info is None else self.best_weights_path
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"model": model.registry_name}))
        if best_info is not None:
            atomic_write_text(self.best_info_path, json.dumps(best_info, indent=2) + "\n")

    def best_info(self) -> dict | None:
        """The score and epoch of model-best.safetensors, or None when the run has no best weights."""
        if not (self.best_info_path.is_file() and self.best_weights_path.is_file()):
            return None
        try:
            return json.loads(self.best_info_path.read_text())
        except (json.JSONDecodeError, OSError):
            return None

    def load_weights(self, path: Path | None = None) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = path or self.weights_path
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise RunFolderError(f"{path} is damaged or not a safetensors file ({exc})") from None

    # checkpoints -------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.iterdir() if CHECKPOINT_PATTERN.match(p.name)]
        return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))

    def save_checkpoint(self, state: dict, step: int, keep: int) -> Path:
        path = self.checkpoint_dir / f"step-{step:08d}.pt"
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Path | None = None) -> dict:
        """The newest readable checkpoint (or ``path``); a damaged newest one falls back to the one before."""
        candidates = [Path(path)] if path else list(reversed(self.checkpoints()))
        if not candidates:
            raise RunFolderError(f"no checkpoints in {self.checkpoint_dir}; nothing to resume")
        errors = []
        for candidate in candidates:
            try:
                return read_checkpoint(candidate)
            except RunFolderError as exc:
                errors.append(str(exc))
                if path is None:
                    warnings.warn(f"{exc}; trying an older checkpoint")
        raise RunFolderError("no readable checkpoint:\n" + "\n".join(errors))

    # metrics -----------------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return rows


def read_checkpoint(path: Path) -> dict:
    """Load one checkpoint without executing code; damaged or pickled-code files raise RunFolderError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(
            f"checkpoint {path} is damaged or holds something other than tensors and plain values "
            f"(refused to load it: {first[:200]})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise RunFolderError(f"checkpoint {path} is not a vaelab checkpoint")
    return state


def load_checkpoint_into(model: torch.nn.Module, path: Path) -> dict:
    """Load checkpoint ``path`` into ``model``: the weights the run samples from (the weight average where
    train.ema_decay kept one, else the trained weights). Returns the checkpoint's state."""
    state = read_checkpoint(path)
    average = state.get("average")
    model.load_state_dict(average["weights"] if average else state["model"])
    return state


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: the accelerator where there is one (CUDA, then Apple's MPS), else the CPU; any other name as given.
    Every verb after ``train`` defaults to it, so work on a GPU machine runs on its GPU without a flag."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load(path: str | Path, device: str | torch.device = "auto", weights: str = "best"):
    """Rebuild the model of run folder ``path`` with its trained weights, in eval mode.

    ``weights="best"`` (the default) takes model-best.safetensors, the epoch whose samples scored best during
    training, where the run has it, and model.safetensors (the last weights) otherwise; ``"last"`` always takes
    model.safetensors. A run stopped before its weights were written falls back to its newest checkpoint.

    The model samples from its prior; ``vaelab.load`` (``vaelab.samplers.load``) also attaches the run's fitted
    latent sampler.
    """
    from .models.registry import build_model

    if weights not in ("best", "last"):
        raise RunFolderError(f"weights must be 'best' or 'last', got {weights!r}")
    run = RunFolder(path)
    cfg = run.read_config()
    model = build_model(cfg.model)
    if weights == "best" and run.best_info() is not None:
        state = run.load_weights(run.best_weights_path)
        model.weights_file = run.best_weights_path.name
    elif run.weights_path.is_file():
        state = run.load_weights()
        model.weights_file = run.weights_path.name
    elif run.checkpoints():
        warnings.warn(f"{run.weights_path} not found (training did not finish); using the newest checkpoint")
        state = run.load_checkpoint()["model"]
        model.weights_file = "checkpoint"
    else:
        raise RunFolderError(f"{run.path} has no weights (no model.safetensors and no checkpoints)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunFolderError(f"the weights in {run.path} do not fit its config.yaml ({str(exc).splitlines()[0]})") from None
    model.run_config = cfg
    return model.to(resolve_device(device)).eval()


def unique_run_dir(base: Path) -> Path:
    """``base`` if it is free (missing or empty), else the first free ``base-2``, ``base-3``, ..."""
    base = Path(base)
    if not base.exists() or not any(base.iterdir()):
        return base
    for i in range(2, 10_000):
        candidate = base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    raise RunFolderError(f"too many runs named {base}*; pass --out")


def new_run_folder(name: str, out: str | Path | None) -> Path:
    """The folder of a new run: ``out`` when given (an error if it already holds a run), else a free
    ``runs/<name>``."""
    if out is None:
        return unique_run_dir(Path("runs") / name)
    if RunFolder(out).exists():
        raise RunFolderError(f"{out} already holds a run; continue it with `vaelab train --resume {out}` or choose "
                             "another --out")
    return Path(out)
