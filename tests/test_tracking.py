"""Experiment trackers (vaelab.tracking) against the real libraries: a real MLflow server on 127.0.0.1, an MLflow
store with no server, and W&B in offline mode; no mocks of a tracker."""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_overrides
from vaelab.cli import app
from vaelab.config import load_config
from vaelab.errors import ConfigError
from vaelab.tracking import Tracker, Trackers, TrackerUnavailable, flatten
from vaelab.training import train

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny(tmp_path, trackers, **more):
    return load_config(overrides=tiny_overrides(**{"train.epochs": 2, "train.log_every": 2,
                                                   "train.trackers": f"[{', '.join(trackers)}]", **more}))


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free port of 127.0.0.1 with a SQLite backend and a local artifact folder; stopped (and
    its port free again) at the end."""
    port = _free_port()
    folder = tmp_path / "mlflow"
    folder.mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{folder / 'store.db'}", "--artifacts-destination", str(folder / "artifacts"), "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(uri + "/health", timeout=1).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start in 60 s")
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # nothing listens on the port any more
        s.connect(("127.0.0.1", port))


def test_a_run_tracked_on_an_mlflow_server_holds_its_config_curves_grids_files_resume_and_evaluation(
        tmp_path, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run = tmp_path / "run"
    cfg = _tiny(tmp_path, ["mlflow"])
    summary = train(cfg, run, progress=False)
    ids = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert ids["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    tracked = client.get_run(ids["run_id"])
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags["vaelab.run_folder"] == str(run.resolve())
    expected = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flatten(cfg.to_dict()).items()}
    assert tracked.data.params == expected
    steps = summary["steps"]
    losses = client.get_metric_history(ids["run_id"], "train/loss")
    assert [m.step for m in losses] == list(range(2, steps + 1, 2))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["loss"] for r in rows if r["event"] == "step"]
    assert [m.value for m in losses] == pytest.approx(logged)
    fid = client.get_metric_history(ids["run_id"], "epoch/sample_fid")
    assert len(fid) == 2 and "epoch/monitor_elbo" in tracked.data.metrics
    grids = {a.path for a in client.list_artifacts(ids["run_id"], "samples")}
    assert {"samples/epoch-0002-samples.png", "samples/epoch-0002-reconstructions.png"} <= grids
    files = {a.path for a in client.list_artifacts(ids["run_id"], "run")}
    kept = "model-best.safetensors" if (run / "model-best.safetensors").is_file() else "model.safetensors"
    assert {f"run/{kept}", "run/config.yaml", "run/summary.json"} <= files
    # --resume continues the same MLflow run
    out = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "3", "--no-progress"])
    assert out.exit_code == 0, out.output
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == ids["run_id"]
    assert len(client.search_runs([ids["experiment_id"]])) == 1
    assert len(client.get_metric_history(ids["run_id"], "epoch/sample_fid")) == 3
    assert client.get_run(ids["run_id"]).data.tags["vaelab.changed_on_resume"] == "train.epochs=3"
    # evaluate adds its numbers to that run
    out = CliRunner().invoke(app, ["evaluate", str(run), "--num-samples", "64", "--k", "0", "--no-utility",
                                   "--features", "pixels"])
    assert out.exit_code == 0 and "logged the metrics to mlflow" in out.output, out.output
    result = json.loads((run / "eval" / "metrics.json").read_text())
    metrics = client.get_run(ids["run_id"]).data.metrics
    assert metrics["eval/test/sample_metrics.features.pixels.fid"] == pytest.approx(
        result["sample_metrics"]["features"]["pixels"]["fid"])
    assert "eval/metrics.json" in {a.path for a in client.list_artifacts(ids["run_id"], "eval")}
    # and compare finds the run folder from the MLflow run id
    out = CliRunner().invoke(app, ["compare", f"mlflow:{ids['run_id']}", "-o", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "report" / "metrics.csv").read_text().splitlines()[1].startswith("run,")
    out = CliRunner().invoke(app, ["compare", "mlflow:0123456789abcdef", "-o", str(tmp_path / "none")])
    assert out.exit_code == 2 and "the mlflow run could not be read" in out.output, out.output


def test_trackers_config_and_the_older_tensorboard_switch():
    assert load_config().train.trackers == ["tensorboard"]
    assert load_config(overrides=["train.tensorboard=false"]).train.trackers == []  # run folders written before
    assert load_config(overrides=["train.trackers=[mlflow, wandb]"]).train.trackers == ["mlflow", "wandb"]
    with pytest.raises(ConfigError, match="train.trackers must list each of tensorboard, mlflow, wandb"):
        load_config(overrides=["train.trackers=[comet]"])


def test_an_mlflow_file_store_without_a_server(tmp_path, monkeypatch):
    """mlruns/ in a folder, no server (MLflow 3 keeps its file store behind MLFLOW_ALLOW_FILE_STORE; its default
    store is now a SQLite file, which the server test uses)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = (tmp_path / "mlruns").as_uri()
    cfg = _tiny(tmp_path, ["mlflow"], **{"train.tracker_uri": store, "train.tracker_project": "digits"})
    train(cfg, tmp_path / "run", progress=False)
    ids = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(store)
    assert client.get_experiment(ids["experiment_id"]).name == "digits"
    assert len(client.get_metric_history(ids["run_id"], "epoch/monitor_elbo")) == 2


def test_a_tracker_that_is_down_at_the_start_stops_the_run_before_training_unless_optional(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackerUnavailable, match=f"{uri}.*tracker_optional"):
        train(_tiny(tmp_path, ["mlflow"]), tmp_path / "down", progress=False)
    assert not list((tmp_path / "down").glob("checkpoints/*"))  # nothing trained
    with pytest.warns(UserWarning, match="training without mlflow"):
        summary = train(_tiny(tmp_path, ["mlflow"], **{"train.tracker_optional": "true"}), tmp_path / "on",
                        progress=False)
    assert summary["epochs_done"] == 2 and not (tmp_path / "on" / "trackers.json").exists()


def test_credentials_in_a_tracker_uri_never_reach_disk_or_messages_and_a_failed_start_leaves_no_folder(tmp_path,
                                                                                                     monkeypatch):
    from vaelab.run import RunFolder
    from vaelab.uris import redact

    assert redact("https://alice:s3cret@mlflow.example.org:443/p") == "https://***@mlflow.example.org:443/p"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000" and redact(None) is None
    uri = f"http://alice:s3cret@127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(TrackerUnavailable) as refused:
        train(_tiny(tmp_path, ["mlflow"], **{"train.tracker_uri": uri}), tmp_path / "down", progress=False)
    assert "s3cret" not in str(refused.value) and "***@127.0.0.1" in str(refused.value)
    assert not (tmp_path / "down").exists()  # no half-made folder for the same --out to refuse
    cfg = _tiny(tmp_path, [], **{"train.tracker_uri": uri})
    RunFolder(tmp_path / "written").path.mkdir()
    RunFolder(tmp_path / "written").write_config(cfg)
    assert "s3cret" not in (tmp_path / "written" / "config.yaml").read_text()


def test_evaluate_logs_unasked_only_to_a_tracker_on_this_machine_or_the_configured_server(tmp_path, monkeypatch):
    """A run folder received from someone else names their server in trackers.json: evaluating it contacts nothing
    unless --track asks (or the environment names that server)."""
    from vaelab.tracking import track_evaluation

    run = tmp_path / "theirs"
    train(_tiny(tmp_path, []), run, progress=False)
    silent = f"http://127.0.0.1:{_free_port()}"  # would refuse a connection: any attempt fails the start check
    (run / "trackers.json").write_text(json.dumps({"mlflow": {"run_id": "abc", "tracking_uri": silent}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import warnings

    with warnings.catch_warnings():  # not contacted: no "cannot be reached" warning, nothing logged
        warnings.simplefilter("error")
        assert track_evaluation(run, {"split": "test"}) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent)  # the environment names that server: it is asked (and down)
    with pytest.warns(UserWarning, match="cannot be reached"):
        assert track_evaluation(run, {"split": "test"}) == []


def test_a_tracker_failing_mid_run_is_dropped_with_a_warning_and_the_run_completes(tmp_path):
    class Breaks(Tracker):
        name = "breaks"

        def log_metrics(self, values, step):
            raise ConnectionError("the server went away")

    trackers = Trackers(tmp_path, [])
    trackers.active = [Breaks()]
    with pytest.warns(UserWarning, match="breaks failed while logging metrics .*the server went away.*goes on"):
        trackers.log_row({"event": "step", "step": 1, "loss": 1.0})
    assert trackers.active == []
    trackers.log_row({"event": "step", "step": 2, "loss": 1.0})  # nothing left to fail


def _wandb_records(path: Path):
    """The records of an offline W&B run file (``run-<id>.wandb``): wandb 0.31 has no Python reader for it (its
    writer and reader are in the Go core), so the LevelDB-log framing is read here (a 7-byte file header, 32 KiB
    blocks of records with a 7-byte header: checksum, length, kind) and each record is parsed with wandb's own
    protobuf schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1)
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def test_a_wandb_offline_run_holds_the_config_history_and_grids(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = _tiny(tmp_path, ["wandb"])
    summary = train(cfg, run, progress=False)
    # run.finish() returns before W&B's service process has written the whole run file (the test read it part-way
    # in CI: no config, half the history, or a record cut off); teardown waits for the service to end, as the
    # interpreter's exit does for a user
    import wandb

    wandb.teardown()
    ids = json.loads((run / "trackers.json").read_text())["wandb"]
    (run_file,) = Path(ids["dir"]).glob("run-*.wandb")
    config, history = {}, []
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    assert config["train.epochs"] == 2 and config["model.latent_dim"] == cfg.model.latent_dim
    assert config["vaelab_run_folder"] == str(run.resolve())
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert len(losses) == summary["steps"] // 2
    assert sum("epoch/sample_fid" in h for h in history) == 2
    assert any(k.startswith("samples/samples") for h in history for k in h)
    assert list((Path(ids["dir"]) / "files" / "media" / "images").rglob("*.png"))


def test_each_tracker_hears_how_the_run_ended_finished_killed_to_resume_or_failed(tmp_path, monkeypatch):
    """The status every tracker is closed with: FINISHED; KILLED for a Ctrl-C (the run resumes later: W&B's
    preempted state, not a failure); FAILED for an error. A recording tracker stands in for TensorBoard."""
    import signal

    import vaelab.tracking as tracking
    from vaelab.training.loop import Trainer

    ended = []

    class Recording(Tracker):
        name = "tensorboard"
        interrupt_at = None

        def start(self, run_path, params, previous, cfg):
            return {}

        def log_metrics(self, values, step):
            if Recording.interrupt_at is not None and step >= Recording.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)  # the loop's handler turns it into a stop at this step

        def finish(self, status):
            ended.append(status)

    monkeypatch.setitem(tracking.TRACKER_CLASSES, "tensorboard", Recording)
    sets = {"train.trackers": "[tensorboard]", "train.epochs": 1, "train.max_steps": 12}
    train(load_config(overrides=tiny_overrides(**sets)), tmp_path / "done", progress=False)
    Recording.interrupt_at = 5
    result = train(load_config(overrides=tiny_overrides(**sets)), tmp_path / "stopped", progress=False)
    assert result.get("interrupted") and result["step"] == 5
    Recording.interrupt_at = None
    original = Trainer.train_step

    def breaks(self, batch):
        if self.pos.step == 3:
            raise RuntimeError("a bug in a model")
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", breaks)
    with pytest.raises(RuntimeError, match="a bug in a model"):
        train(load_config(overrides=tiny_overrides(**sets)), tmp_path / "broken", progress=False)
    assert ended == ["FINISHED", "KILLED", "FAILED"]


def test_wandb_marks_a_resumable_stop_as_preempted_and_only_an_error_as_a_failure():
    from vaelab.tracking import WandbTracker

    class FakeRun:
        def __init__(self):
            self.calls = []

        def mark_preempting(self):
            self.calls.append("preempting")

        def finish(self, exit_code):
            self.calls.append(exit_code)

    calls = {}
    for status in ("FINISHED", "KILLED", "FAILED"):
        tracker = WandbTracker()
        tracker.run = FakeRun()
        tracker.finish(status)
        calls[status] = tracker.run.calls
    assert calls == {"FINISHED": [0], "KILLED": ["preempting", 1], "FAILED": [1]}
