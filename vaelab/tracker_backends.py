"""The trackers themselves (``vaelab.tracking`` feeds them): the ``Tracker`` contract and its TensorBoard, MLflow and
Weights & Biases implementations, each started, fed and finished by ``tracking.Trackers``."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import VaelabError
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
        if status == "KILLED":  # stopped to be resumed (Ctrl-C): W&B's preempted state, not a failure
            self.run.mark_preempting()
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
