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
warning, and the run goes on without it.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from .config import TRACKER_NAMES
from .errors import ConfigError, VaelabError
from .uris import redact
MLFLOW_PARAM_LIMIT = 6000  # characters of one parameter value MLflow stores


class TrackerUnavailable(VaelabError):
    """A tracker asked for cannot be used: its extra is not installed, or its server cannot be reached."""


def _mlflow_uri(recorded: str | None, cfg) -> str:
    """The URI to reach: the environment's where its redacted form is the one recorded (credentials live there),
    else the recorded or configured one, else MLflow's default."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    for candidate in (recorded, cfg.train.tracker_uri):
        if candidate:
            return env if env and redact(env) == candidate else candidate
    return mlflow.get_tracking_uri()


# tracker calls while a run trains wait this long at most, with one retry, before the tracker is dropped (MLflow's
# own defaults retry a dead server for minutes, the training loop waiting on each call); the user's settings win
TRACKER_HTTP = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}


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


def _import(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise TrackerUnavailable(f"train.trackers asks for {name}, which is not installed; install it with "
                                 f'pip install "vaelab[{name}]"') from None


# the trackers ---------------------------------------------------------------------------------------------
class Tracker:
    """One tracker. ``start`` opens (or, given the ids ``previous`` recorded in trackers.json, reopens) its run
    and returns the ids to record; the other calls log to it."""

    name = ""

    def start(self, run_path: Path, params: dict, previous: dict | None, cfg) -> dict:
        raise NotImplementedError

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_image(self, path: Path, key: str, step: int) -> None:
        pass

    def log_artifact(self, path: Path, folder: str) -> None:
        pass

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (stopped by Ctrl-C, to be resumed)."""


class TensorBoardTracker(Tracker):
    """Scalars into TensorBoard event files in the run folder (``tensorboard --logdir RUN``)."""

    name = "tensorboard"

    def start(self, run_path, params, previous, cfg):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_path))
        return {}

    def log_metrics(self, values, step):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, status):
        self.writer.close()


@contextmanager
def _quick_http():
    """MLflow's HTTP client retries a dead server for minutes by default; the start check asks once, briefly."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class MLflowTracker(Tracker):
    """An MLflow run in experiment ``train.tracker_project`` (default "vaelab") of the tracking server or store."""

    name = "mlflow"

    def start(self, run_path, params, previous, cfg):
        # MLflow 3 reports usage to its makers unless told not to: vaelab contacts only the server the user named
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        mlflow = _import("mlflow")
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        for key, value in TRACKER_HTTP.items():
            os.environ.setdefault(key, value)
        uri = _mlflow_uri((previous or {}).get("tracking_uri"), cfg)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = cfg.train.tracker_project or "vaelab"
        try:
            with _quick_http():
                found = self.client.get_experiment_by_name(experiment)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is the same problem for the user
            raise TrackerUnavailable(f"the MLflow tracking server or store at {redact(uri)} cannot be reached "
                                     f"({_short(exc)}); start it, or point MLFLOW_TRACKING_URI / train.tracker_uri "
                                     f"elsewhere") from None
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        old = {}
        if previous and previous.get("run_id"):
            self.run_id = previous["run_id"]
            old = self.client.get_run(self.run_id).data.params
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"vaelab.run_folder": str(run_path.resolve()), "vaelab.version": _version(),
                    "mlflow.runName": run_path.name}
            self.run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
        values = {k: _param_text(v) for k, v in params.items()}
        new = [Param(k, v) for k, v in values.items() if k not in old]
        changed = sorted(k for k, v in values.items() if k in old and old[k] != v)
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        if changed:  # MLflow keeps a parameter's first value; what a resume changed goes into a tag
            self.client.log_batch(self.run_id, tags=[RunTag("vaelab.changed_on_resume", ", ".join(
                f"{k}={values[k]}" for k in changed)[:MLFLOW_PARAM_LIMIT])])
        return {"run_id": self.run_id, "tracking_uri": redact(uri), "experiment_id": experiment_id}

    def log_metrics(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 500])

    def log_image(self, path, key, step):
        self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def log_artifact(self, path, folder):
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def finish(self, status):
        self.client.set_terminated(self.run_id, status)


class WandbTracker(Tracker):
    """A Weights & Biases run in project ``train.tracker_project`` (else WANDB_PROJECT, else "vaelab"); its local
    files under RUN/wandb/. ``WANDB_MODE=offline`` keeps everything on disk (``wandb sync`` uploads it later)."""

    name = "wandb"

    def start(self, run_path, params, previous, cfg):
        wandb = _import("wandb")
        self.wandb = wandb
        project = cfg.train.tracker_project or os.environ.get("WANDB_PROJECT") or "vaelab"
        run_id = (previous or {}).get("id")
        try:
            self.run = wandb.init(project=project, dir=str(run_path), name=run_path.name, id=run_id,
                                  resume="allow" if run_id else None, config=params, reinit="create_new",
                                  notes=f"vaelab run folder {run_path.resolve()} (vaelab {_version()})",
                                  settings=wandb.Settings(quiet=True))
        except Exception as exc:  # noqa: BLE001 - login, network or settings: the user sees one clear line
            raise TrackerUnavailable(f"Weights & Biases could not start a run ({_short(exc)}); log in with `wandb "
                                     f"login`, or set WANDB_MODE=offline to keep the run on disk") from None
        self.run.config.update({"vaelab_run_folder": str(run_path.resolve()), "vaelab_version": _version()},
                               allow_val_change=True)
        return {"id": self.run.id, "project": project, "dir": str(Path(self.run.dir).parent)}

    def log_metrics(self, values, step):
        self.run.log(values, step=step)

    def log_image(self, path, key, step):
        self.run.log({key: self.wandb.Image(str(path))}, step=step)

    def log_artifact(self, path, folder):
        artifact = self.wandb.Artifact(f"{self.run.id}-{path.name}", type=folder)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, status):
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaelab")
    except PackageNotFoundError:
        return "unknown"


def _param_text(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MLFLOW_PARAM_LIMIT]


def _short(exc: Exception) -> str:
    text = " ".join(redact(word) for word in str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


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
