"""The one training loop every model uses.

The model owns its losses and the order of its updates (``training_step(batch, ctx)`` with the ``UpdateContext`` of
``training.updates``); this loop owns the rest: device and processes (``processes.join_processes``: one CPU, a GPU,
or many processes under ``torchrun`` / ``accelerate launch``), speed and precision (``accel.prepare``), seeds,
progress, logs, sample grids, atomic checkpoints and exact resume (``training.checkpoints``), NaN detection and
rollback, the best-weights score, Ctrl-C and time budgets. What a run does after its last step is in
``training.end_of_run``.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from ..accel import prepare, use_channels_last
from ..config import Config, fill_data_shape, parse_duration
from ..data import epoch_batches, iterate_batches, load_data
from ..errors import ConfigError, TrainingDiverged
from ..models.base import GenerativeModel
from ..models.registry import build_model
from ..processes import join_processes, process_seed
from ..run import RunFolder, atomic_write_text
from .checkpoints import (Position, average_buffers, learning_rates_in_force, restore_training_state,
                          scale_learning_rates, training_state)
from .data_size import describe_augmentation, describe_scaling, resolve_augmentation, scale_to_data_size
from .lr_schedule import apply_lr_factor, lr_factor
from .end_of_run import finish
from .monitor import monitor_likelihood, write_grids
from .updates import UpdateContext
from .weight_average import WeightAverage

class Trainer:
    def __init__(self, cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
                 adapt_batch_size: bool = False):
        """``adapt_batch_size``: train.batch_size is a default rather than the user's choice, so a training split
        smaller than one batch shrinks it (with a warning) instead of stopping with an error."""
        self.started = time.perf_counter()  # for the time to the first step (data, model, tracker start-up)
        self.cfg, self.progress = cfg, progress
        self.run = RunFolder(out)
        t = cfg.train
        self.device, self.rank, self.world = join_processes(t.device)
        self.is_main = self.rank == 0
        self.time_budget = parse_duration(t.time_budget) if t.time_budget else None

        torch.manual_seed(t.seed)
        self.data = load_data(cfg.data)
        fill_data_shape(cfg, self.data)
        self.augmentation = None if resume else resolve_augmentation(cfg.model, len(self.data.train))
        self.model: GenerativeModel = build_model(cfg.model)
        self.accel = prepare(self.model, self.device, t.precision, t)
        self.precision, self.optimizers = self.accel.precision, self.accel.optimizers
        self.average = None  # the weight average (train.ema_decay): what the run samples, scores and saves
        if t.ema_decay is not None:
            with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten; keep training's RNG
                copy = build_model(cfg.model).to(self.device)
            if self.accel.memory_format is not None:
                use_channels_last(copy)
            self.average = WeightAverage(copy, self.model, t.ema_decay)
        self.updates = UpdateContext(self.optimizers, self.accel.scalers, self.world, t.grad_clip_norm,
                                     self.device.type)
        if self.data.train.images is not None and self.data.train.rows is None:  # memory-mapped cache: per batch
            self.data.train.images = self.data.train.images.to(self.device)
        self.batches_per_epoch = len(epoch_batches(len(self.data.train), t.batch_size, t.seed, 0, world=self.world))
        if self.batches_per_epoch == 0 and adapt_batch_size and len(self.data.train) >= self.world:
            fitted = len(self.data.train) // self.world
            warnings.warn(f"train.batch_size={t.batch_size} (the preset's) is larger than the training split "
                          f"({len(self.data.train)} images over {self.world} process(es)); training with batches of "
                          f"{fitted} (set train.batch_size to choose another)")
            t.batch_size = fitted
            self.batches_per_epoch = len(epoch_batches(len(self.data.train), t.batch_size, t.seed, 0, world=self.world))
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size={t.batch_size} x {self.world} process(es) is larger than the training split "
                f"({len(self.data.train)} images); lower train.batch_size"
            )

        self.size_scaling = None if resume else scale_to_data_size(t, len(self.data.train))
        self.pos = Position()
        self.rollbacks = 0
        self.epoch_lrs: dict[str, float] = {}  # the rates the lr schedule set for this epoch (none when constant)
        self.elapsed = 0.0  # training wall time over all sessions of this run, for time budgets
        if resume:
            self._restore(self.run.load_checkpoint())
        if self.rank > 0:  # same initial weights, different noise per process (also after a resume)
            torch.manual_seed(process_seed(t.seed, self.rank, self.pos.step))
        self.trackers = None  # train.trackers, opened on the main process before the first step
        self.quality = None  # the best-weights score, built at the first epoch's end
        self.warned_no_choice = False
        if self.is_main:
            created = not self.run.path.exists()
            self.run.path.mkdir(parents=True, exist_ok=True)
            if not resume:  # best weights of an earlier run in this folder are not this run's
                self.run.best_weights_path.unlink(missing_ok=True)
                self.run.best_info_path.unlink(missing_ok=True)
            self.run.write_config(cfg)
            for event, decision, say in (("size_scaling", self.size_scaling, describe_scaling),
                                         ("augmentation", self.augmentation, describe_augmentation)):
                if decision is not None:  # what the data's size changed, said once at the start
                    message = say(decision)
                    if self.progress:
                        print(message, flush=True)
                    self.log({"event": event, "step": 0, "message": message, **decision})
            if t.trackers:  # a tracker that cannot be reached stops the run here, before any training
                from ..tracking import Trackers

                try:
                    self.trackers = Trackers(self.run.path, t.trackers).start(cfg, resume=resume,
                                                                               optional=t.tracker_optional)
                except Exception:
                    if created:  # nothing trained: no half-made run folder for the same --out to refuse later
                        import shutil

                        shutil.rmtree(self.run.path, ignore_errors=True)
                    raise

    # state -------------------------------------------------------------------------------------------
    def _restore(self, state: dict) -> None:
        self.pos, self.elapsed = restore_training_state(state, self.model, self.optimizers, self.accel.scalers,
                                                        self.run.path, self.average)

    @property
    def sampled_model(self) -> GenerativeModel:
        """The weights the run samples, scores and saves: the weight average when train.ema_decay is set."""
        return self.model if self.average is None else self.average.model

    def _roll_back(self, reason: str) -> None:
        """Restore the newest checkpoint and scale every learning rate by train.rollback_lr_factor."""
        t = self.cfg.train
        self.rollbacks += 1
        failed_at, elapsed = self.pos.step + 1, self.elapsed  # the step that diverged
        in_force = learning_rates_in_force(self.optimizers)
        self._restore(self.run.load_checkpoint())
        self.elapsed = elapsed  # the failed stretch still counts against a time budget
        lrs = scale_learning_rates(self.optimizers, in_force, t.rollback_lr_factor)
        self.log({"event": "rollback", "step": self.pos.step, "failed_at_step": failed_at, "reason": reason,
                  "rollback": self.rollbacks, **{f"lr_{n}": v for n, v in lrs.items()}})
        if self.is_main:
            warnings.warn(f"{reason}; rolled back to step {self.pos.step} and scaled the learning rate by "
                          f"{t.rollback_lr_factor} (rollback {self.rollbacks} of at most {t.max_rollbacks})")

    def save_checkpoint(self) -> None:
        self.sync_buffers()
        if self.is_main:
            state = training_state(self.model, self.optimizers, self.accel.scalers, self.pos, self.elapsed,
                                   self.average)
            self.run.save_checkpoint(state, self.pos.step, self.cfg.train.keep_checkpoints)

    def sync_buffers(self) -> None:
        """BatchNorm statistics averaged over the processes, for the trained weights and the weight average."""
        average_buffers(self.model, self.world)
        if self.average is not None:
            average_buffers(self.average.model, self.world)

    # logging -----------------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        if not self.is_main:
            return
        with open(self.run.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.log_row(row)

    # the loop ----------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimizer step of the model on ``batch`` in the run's memory layout and precision; its losses."""
        batch["x"] = self.accel.to_layout(batch["x"])
        with self.accel.autocast():
            return self.model.training_step(batch, self.updates)

    def fit(self) -> dict:
        stop = {"signal": False, "finishing": False}

        def request_stop(signum, frame):
            # a second Ctrl-C stops at once; so does the first after the last step (the end-of-run work can take
            # minutes, and the state it would have saved is saved before it starts)
            if stop["signal"] or stop["finishing"]:
                raise KeyboardInterrupt
            stop["signal"] = True

        handlers = {}
        if self.is_main and sys.platform != "win32":
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    handlers[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (a notebook runner, say): no handlers
                handlers = {}
        status = "FAILED"
        try:
            try:
                result = self._loop(stop)
            except KeyboardInterrupt:
                if not stop["finishing"]:
                    raise
                self.save_checkpoint()  # stopped in the end-of-run work: a resume redoes it from here
                result = {"interrupted": True, "step": self.pos.step, "run": str(self.run.path)}
            status = "KILLED" if result.get("interrupted") else "FINISHED"  # an interrupted run resumes later
            return result
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.trackers is not None:
                self.trackers.finish(status)

    def _loop(self, stop: dict) -> dict:
        from tqdm.auto import tqdm

        t = self.cfg.train
        self.model.train()
        finished_reason = "epochs"
        window: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}  # a term may be logged on some steps only (a generator every n_critic steps)
        window_images, window_time = 0, 0.0
        epoch_images, epoch_time = 0, 0.0
        throughput = None
        while self.pos.epoch < t.epochs:
            batches = epoch_batches(len(self.data.train), t.batch_size, t.seed, self.pos.epoch,
                                    rank=self.rank, world=self.world)
            bar = tqdm(total=len(batches), initial=self.pos.batch, desc=f"epoch {self.pos.epoch + 1}/{t.epochs}",
                       disable=not (self.progress and self.is_main and sys.stderr.isatty()), leave=False, dynamic_ncols=True)
            if t.lr_schedule != "constant":
                factor = lr_factor(t.lr_schedule, self.pos.epoch, t.lr_schedule_epochs or t.epochs, t.lr_final_factor,
                                   t.lr_gamma)
                self.epoch_lrs = apply_lr_factor(self.optimizers, factor)
            tick = time.perf_counter()
            rolled_back = False
            for batch in iterate_batches(self.data.train, batches[self.pos.batch :], self.device, self.cfg.data.num_workers):
                self.updates.step = self.pos.step
                if self.started is not None:  # the first batch of this session is ready: how long start-up took
                    self._first_step(time.perf_counter() - self.started)
                try:
                    losses = self.train_step(batch)
                except TrainingDiverged as exc:
                    bar.close()
                    last = self.run.checkpoints()
                    if t.on_nan == "rollback" and last and self.rollbacks < t.max_rollbacks:
                        self._roll_back(str(exc))
                        rolled_back = True
                        break
                    where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
                    raise TrainingDiverged(
                        f"{exc}. Training stopped; {where}. Lower the learning rate (--set model.lr=...), use "
                        f"--precision fp32 or --on-nan rollback, then continue with `vaelab train --resume {self.run.path}`."
                    ) from None
                if self.average is not None:
                    self.average.update(self.model)
                self.pos.step += 1
                self.pos.batch += 1
                for key, value in losses.items():
                    window[key] = window.get(key, 0.0) + value.float()
                    counts[key] = counts.get(key, 0) + 1
                window_images += batch["x"].shape[0] * self.world
                now = time.perf_counter()
                self.elapsed += now - tick
                window_time += now - tick
                epoch_images += batch["x"].shape[0] * self.world
                epoch_time += now - tick
                bar.update(1)
                if self.pos.step % t.log_every == 0:
                    row = {k: float(v) / counts[k] for k, v in window.items()}
                    throughput = window_images / max(window_time, 1e-9)
                    self.log({"event": "step", "step": self.pos.step, "epoch": self.pos.epoch + 1, **row,
                              "images_per_s": throughput})
                    bar.set_postfix({**{k: f"{v:.4g}" for k, v in row.items()}, "img/s": f"{throughput:.0f}"})
                    window, counts, window_images, window_time = {}, {}, 0, 0.0
                if t.checkpoint_every_steps and self.pos.step % t.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                if stop["signal"]:
                    finished_reason = "interrupted"
                elif t.max_steps is not None and self.pos.step >= t.max_steps:
                    finished_reason = "max_steps"
                elif self.time_budget is not None and self.elapsed >= self.time_budget:
                    finished_reason = "time_budget"
                if finished_reason != "epochs":
                    break
                tick = time.perf_counter()
            bar.close()
            if rolled_back:  # back at the checkpoint's position: rebuild this epoch's batches from there
                window, counts, window_images, window_time = {}, {}, 0, 0.0
                continue
            if finished_reason == "interrupted":
                self.save_checkpoint()
                return {"interrupted": True, "step": self.pos.step, "run": str(self.run.path)}
            if finished_reason == "epochs":
                self.pos.epoch += 1
                self.pos.batch = 0
                self._end_of_epoch(epoch_images / max(epoch_time, 1e-9))
                epoch_images, epoch_time = 0, 0.0
            else:
                break
        stop["finishing"] = True
        return self._finish(finished_reason)

    def _first_step(self, seconds: float) -> None:
        self.started = None
        self.log({"event": "first_step", "step": self.pos.step + 1, "seconds_since_start": seconds})
        if self.is_main and self.progress:
            print(f"first training step starts {seconds:.1f} s after the start (data, model, trackers)", flush=True)

    def _end_of_epoch(self, images_per_s: float) -> None:
        t = self.cfg.train
        e = self.pos.epoch
        # The checkpoint first: nothing optional after it can lose the epoch's training.
        if t.checkpoint_every_epochs and (e % t.checkpoint_every_epochs == 0 or e == t.epochs):
            self.save_checkpoint()
        else:
            self.sync_buffers()
        row = {"event": "epoch", "step": self.pos.step, "epoch": e, "images_per_s": images_per_s,
               **{f"lr_{name}": lr for name, lr in self.epoch_lrs.items()}}
        metrics = monitor_likelihood(self.sampled_model, self.data.validation, t.eval_images, self.accel, t.seed)
        if metrics:
            row.update(metrics)
        if t.track_best and self.is_main and (e % t.best_every_epochs == 0 or e == t.epochs):
            row.update(self.optional("the best-weights score", self.track_best) or {})
        self.log(row)
        if self.is_main and self.progress:
            shown = ""
            if metrics:
                shown = (f"  validation ELBO {metrics['monitor_elbo']:.2f} nats ({self.precision})"
                         if "monitor_elbo" in metrics else f"  validation loss {metrics['monitor_loss']:.2f}")
            if "sample_fid" in row:
                shown += f"  sample FID {row['sample_fid']:.1f}" + (" (best)" if row.get("best") else "")
            print(f"epoch {e}/{t.epochs}  step {self.pos.step}  {images_per_s:.0f} img/s{shown}", flush=True)
        if t.sample_every_epochs and (e % t.sample_every_epochs == 0 or e == t.epochs):
            self.optional("the sample grids", lambda: self.write_grids_at(f"epoch-{e:04d}"))

    def write_grids_at(self, tag: str) -> None:
        n = self.cfg.train.num_sample_images
        if self.is_main and n > 0:
            write_grids(self.sampled_model, self.data.validation, self.run.samples_dir, tag, n, self.cfg.train.seed,
                        self.device)
            if self.trackers is not None:
                self.trackers.log_images(sorted(self.run.samples_dir.glob(f"{tag}-*.png")), self.pos.step)

    def optional(self, what: str, work):
        """Run optional end-of-epoch work; a failure warns (naming it) and training goes on. Returns its result."""
        try:
            return work()
        except Exception as exc:  # noqa: BLE001  (optional work must never end a run)
            message = f"{what} failed at epoch {self.pos.epoch} ({type(exc).__name__}: {exc}); training goes on"
            warnings.warn(message)
            self.log({"event": "warning", "step": self.pos.step, "epoch": self.pos.epoch, "message": message})
            return None

    def track_best(self) -> dict:
        """Score this epoch's samples; keep the weights as model-best.safetensors when they beat the best so far."""
        with torch.random.fork_rng(devices=[]):  # the classifier's training reseeds; resume must stay exact
            return self._score_and_keep()

    def _score_and_keep(self) -> dict:
        from ..metrics.quality import SampleQuality
        from ..samplers import proxy_mixture

        if self.quality is None:  # drawn as the user will sample: through a mixture where the run fits a sampler
            fits = self.cfg.train.sampler != "prior" and self.model.has_encoder
            self.quality = SampleQuality(self.data, self.cfg.data, n=self.cfg.train.best_samples,
                                         seed=self.cfg.train.seed, progress=self.progress, device=self.device,
                                         sampler_proxy=proxy_mixture(self.data, self.cfg.train.seed) if fits else None)
        score = self.quality.score(self.sampled_model)
        if score is None and not self.warned_no_choice:
            self.warned_no_choice = True
            message = (f"the validation split has {self.quality.n} image(s), too few to choose the best epoch on; the "
                       f"run keeps its last weights (model.safetensors)")
            warnings.warn(message)
            self.log({"event": "warning", "step": self.pos.step, "epoch": self.pos.epoch, "message": message})
        if score is None or not math.isfinite(score):
            return {}
        best = self.run.best_info()
        improved = best is None or score < best["sample_fid"]
        if improved:
            self.run.save_weights(self.sampled_model, best_info={"sample_fid": score, "epoch": self.pos.epoch,
                                                         "step": self.pos.step, **self.quality.settings})
        return {"sample_fid": score, "best": improved}

    def _finish(self, reason: str) -> dict:
        return finish(self, reason)


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
          adapt_batch_size: bool = False) -> dict:
    """Train ``cfg`` into run folder ``out`` (continuing its newest checkpoint when ``resume``); returns the summary.
    ``adapt_batch_size``: see ``Trainer``."""
    return Trainer(cfg, out, resume=resume, progress=progress, adapt_batch_size=adapt_batch_size).fit()
