"""Experiment trackers: TensorBoard (the default), MLflow and Weights & Biases, all fed from one place.

The training loop hands every logged row (the step losses every ``train.log_every`` steps, the per-epoch numbers,
the end-of-run summary), every sample / reconstruction grid and, at the end, the run's files to ``Trackers``, which
passes them to each tracker in ``train.trackers``; ``vaelab evaluate`` adds its metrics to the same tracker runs. The
run folder stays the source of truth: ``RUN/trackers.json`` records each tracker's run id (so ``--resume`` and
``evaluate`` continue that run), and each tracker run records the run folder's path and the vaelab version.

Where the trackers log to comes from their own usual settings: MLflow's ``MLFLOW_TRACKING_URI`` (else its local
default) or ``train.tracker_uri``; W&B's ``WANDB_MODE`` / ``WANDB_PROJECT`` / ``WANDB_ENTITY`` / login, or
``train.tracker_project`` (also MLflow's experiment name; default "vaelab"). A tracker that cannot be reached at the
start is an error before any training (a warning with ``train.tracker_optional: true``); one that fails later is a
warning, and the run goes on without it. The trackers themselves are in ``vaelab.tracker_backends``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from .config import TRACKER_NAMES
from .errors import ConfigError, VaelabError
from .tracker_backends import (TRACKER_CLASSES, TRACKER_HTTP, Tracker, TrackerUnavailable, WandbTracker,  # noqa: F401
                               _import, _mlflow_uri, _short)
from .uris import redact


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested mappings as one level with dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) mapping, flattened with ``prefix``; booleans and text left out."""
    return {prefix + k: float(v) for k, v in flatten(values).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


# the set a run logs to --------------------------------------------------------------------------------------
class Trackers:
    """The trackers of one run folder. Every call is passed to each tracker; a tracker whose call fails is warned
    about once and dropped, so a tracker failing mid-run never stops training."""

    def __init__(self, run_path: str | Path, names: list[str]):
        self.run_path = Path(run_path)
        self.names = list(names)
        self.active: list[Tracker] = []

    @property
    def ids_path(self) -> Path:
        return self.run_path / "trackers.json"

    def recorded(self) -> dict:
        try:
            return json.loads(self.ids_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def start(self, cfg, resume: bool = False, optional: bool = False) -> "Trackers":
        """Open each tracker's run (the recorded one when ``resume``) and record their ids in trackers.json."""
        from .run import atomic_write_text

        previous = self.recorded() if resume else {}
        params = flatten(cfg.to_dict())
        params["train.tracker_uri"] = redact(params.get("train.tracker_uri"))
        ids = dict(previous)
        for name in self.names:
            if name not in TRACKER_CLASSES:
                raise ConfigError(f"train.trackers: unknown tracker {name!r}; the trackers are "
                                  f"{', '.join(TRACKER_NAMES)}")
            tracker = TRACKER_CLASSES[name]()
            try:
                try:
                    ids[name] = tracker.start(self.run_path, params, previous.get(name), cfg)
                except TrackerUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - a deleted run, a refused write: one line, not a traceback
                    raise TrackerUnavailable(f"{name} could not open its run ({_short(exc)})") from None
            except TrackerUnavailable as exc:
                if not optional:
                    raise TrackerUnavailable(f"{exc} (or set train.tracker_optional=true to train without it)") \
                        from None
                warnings.warn(f"{exc}; training without {name} (train.tracker_optional)")
                continue
            self.active.append(tracker)
        external = {k: v for k, v in ids.items() if v}
        if external:
            atomic_write_text(self.ids_path, json.dumps(external, indent=2) + "\n")
        return self

    def _each(self, what: str, call) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must never end the training
                warnings.warn(f"{tracker.name} failed while logging {what} ({_short(exc)}); the run goes on without "
                              f"it, and its folder {self.run_path} is complete")
                self.active.remove(tracker)

    def log_row(self, row: dict) -> None:
        """A row of metrics.jsonl: its numbers under "train/" (steps), "epoch/" or "end/", at its step."""
        prefix = {"epoch": "epoch/", "end": "end/", "rollback": "rollback/"}.get(row.get("event"), "train/")
        skip = ("step",) if prefix == "epoch/" else ("step", "epoch")  # the step is the x axis
        values = {prefix + k: v for k, v in numbers(row).items() if k not in skip}
        if values:
            self.log_metrics(values, int(row.get("step", 0)))

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self._each("metrics", lambda t: t.log_metrics(values, step))

    def log_images(self, paths: list[Path], step: int) -> None:
        for path in paths:
            key = "samples/" + path.stem.rsplit("-", 1)[-1]  # samples/samples, samples/reconstructions
            self._each(f"the grid {path.name}", lambda t: t.log_image(path, key, step))

    def log_files(self, paths: list[Path], folder: str) -> None:
        for path in paths:
            if path.is_file():
                self._each(f"the file {path.name}", lambda t: t.log_artifact(path, folder))

    def finish(self, status: str = "FINISHED") -> None:
        self._each("the end of the run", lambda t: t.finish(status))
        self.active = []


def track_evaluation(run_path: str | Path, result: dict, names: list[str] | None = None) -> list[str]:
    """Add ``vaelab evaluate``'s numbers (flattened under "eval/<split>/") to the run's tracker runs: those recorded
    in trackers.json, or ``names`` (new runs where none is recorded). Returns the trackers logged to."""
    from .run import RunFolder

    run = RunFolder(run_path)
    trackers = Trackers(run.path, [])
    recorded = trackers.recorded()
    optional = names is None  # a recorded tracker that is down: a warning; one asked for by --track: an error
    if names is None:  # unasked, only a tracker that reaches no server, or the server this environment names
        skipped = [n for n in recorded if n != "tensorboard" and not _local_or_configured(n, recorded[n])]
        if skipped:
            print(f"not logging to {', '.join(skipped)}: the run was tracked on a server this environment does not "
                  f"name (pass --track {skipped[0]} to log there)", flush=True)
        names = [n for n in recorded if n not in skipped]
    trackers.names = [n for n in names if n != "tensorboard"]
    if not trackers.names:
        return []
    cfg = run.read_config()
    trackers.start(cfg, resume=True, optional=optional)
    split = result.get("split", "test")
    values = numbers({k: v for k, v in result.items() if k in ("likelihood", "sample_metrics", "reconstruction",
                                                                "utility")}, f"eval/{split}/")
    step = int(json.loads(run.summary_path.read_text()).get("steps", 0)) if run.summary_path.is_file() else 0
    trackers.log_metrics(values, step)
    trackers.log_files([run.path / "eval" / "metrics.json"], "eval")
    logged = [t.name for t in trackers.active]
    trackers.finish()
    return logged


def _local_or_configured(name: str, ids: dict) -> bool:
    """Whether evaluating may log to a recorded tracker run unasked: an MLflow store on this machine (a file or
    sqlite path) or the server MLFLOW_TRACKING_URI names; W&B offline (WANDB_MODE=offline or disabled)."""
    if name == "mlflow":
        uri = (ids or {}).get("tracking_uri") or ""
        env = os.environ.get("MLFLOW_TRACKING_URI")
        return uri.startswith(("file:", "sqlite:", "/")) or "://" not in uri or (env is not None and redact(env) == uri)
    if name == "wandb":
        return os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun")
    return False


def run_folder_of(reference: str) -> Path:
    """The run folder a tracker run records: ``mlflow:RUN_ID`` (from the tracking server or store that
    MLFLOW_TRACKING_URI names) or ``wandb:ENTITY/PROJECT/ID`` (from the W&B server; an offline run has not been
    synced there, so give its folder instead)."""
    kind, _, key = reference.partition(":")
    try:
        if kind == "mlflow":
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            _import("mlflow")
            from mlflow.tracking import MlflowClient

            folder = MlflowClient().get_run(key).data.tags.get("vaelab.run_folder")
        else:
            wandb = _import("wandb")
            folder = wandb.Api().run(key).config.get("vaelab_run_folder")
    except TrackerUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - unknown id, server down, not logged in: one line for the user
        raise VaelabError(f"{reference}: the {kind} run could not be read ({_short(exc)})") from None
    if not folder:
        raise VaelabError(f"{reference} was not logged by vaelab (it records no run folder)")
    return Path(folder)
