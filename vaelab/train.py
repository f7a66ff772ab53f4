"""The one training loop every model uses.

The model owns its losses and the order of its updates (``training_step``); this loop owns the rest:
device and processes (Accelerate's ``PartialState``: one CPU, a GPU, or many processes under
``torchrun`` / ``accelerate launch``), precision (``torch.autocast``, a GradScaler for fp16), seeds,
progress, logs, sample grids, atomic checkpoints and exact resume, NaN detection, Ctrl-C and time budgets.

Resume is exact on CPU: each epoch's batch order is a pure function of (seed, epoch), the checkpoint keeps
the position inside the epoch and the RNG states, and evaluation runs under a forked RNG so it never
shifts the training randomness.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from .config import Config
from .data import DataSplits, epoch_batches, first_images, iterate_batches, load_data, spaced_images
from .errors import ConfigError, TrainingDiverged
from .models.base import GenerativeModel, build_model
from .models.cpu_bf16_convs import use_cpu_bf16_convs
from .processes import launched_processes
from .run import RunFolder, atomic_write_text

CHECKPOINT_FORMAT = 1


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h', '2h30m' or plain seconds -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(f"cannot read the duration {text!r}; write it like 90s, 10m, 1.5h or 2h30m")
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


@dataclass
class Position:
    """Where training is: ``step`` optimizer steps done; ``batch`` batches done inside epoch ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


class _Updater:
    """The ``UpdateContext`` handed to ``training_step``: gradients, sync across processes, clip, optimizer steps.

    Each optimizer's gradient is taken with ``torch.autograd.grad`` over its own parameters only, so a loss
    never leaves gradients in another network, and several losses of one forward pass can be applied in turn.
    The gradients are given their parameter's strides, as ``backward()`` would: autograd.grad returns them as the
    ops made them (transposed by a double backward, channels-last from a channels-last conv), and torch 2.14's
    fused CPU Adam silently pairs the wrong elements when the layouts differ (CUDA's raises instead).
    """

    def __init__(self, optimizers, scalers, world: int, grad_clip: float | None, device_type: str):
        self.optimizers, self.scalers = optimizers, scalers
        self.world, self.grad_clip, self.device_type = world, grad_clip, device_type
        self.step = 0

    def update(self, loss: torch.Tensor, optimizer: str, terms: dict[str, torch.Tensor] | None = None) -> None:
        self.update_many({optimizer: loss}, terms)

    def mean_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``values`` over all processes (a detached float32 copy): what a model bases a
        decision on that changes which updates run (a skipped step, a controller's value), so every process takes
        the same one."""
        values = values.detach().float().clone()
        if self.world > 1:
            torch.distributed.all_reduce(values)
            values /= self.world
        return values

    def update_many(self, losses: dict[str, torch.Tensor], terms: dict[str, torch.Tensor] | None = None) -> None:
        """Gradients of every ``{optimizer: loss}`` from the current graph first, then the steps in dict order."""
        # One flag per loss, agreed across processes (MIN), read with one sync: every process stops together,
        # never one raising while the others wait in the gradient all-reduce.
        finite = torch.stack([torch.isfinite(loss.detach()).all() for loss in losses.values()]).float()
        if self.world > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite.all()):
            name, loss = next((n, l) for (n, l), ok in zip(losses.items(), finite.tolist()) if not ok)
            if bool(torch.isfinite(loss.detach())):
                raise TrainingDiverged(f"the loss of optimizer '{name}' became non-finite on another process "
                                       f"at step {self.step + 1}")
            bad = {k: float(v.detach()) for k, v in (terms or {}).items() if not bool(torch.isfinite(v.detach()))}
            term = next(iter(bad), "loss")
            value = bad.get(term, float(loss.detach()))
            raise TrainingDiverged(f"loss term '{term}' (optimizer '{name}') became {value} at step {self.step + 1}")
        pending = []
        names = list(losses)
        for i, name in enumerate(names):
            opt = self.optimizers[name]
            params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
            scaler = self.scalers.get(name)
            loss = scaler.scale(losses[name]) if scaler else losses[name]
            with torch.autocast(self.device_type, enabled=False):
                grads = torch.autograd.grad(loss, params, retain_graph=i + 1 < len(names), allow_unused=True)
            pending.append((name, params, grads))
        for name, params, grads in pending:
            opt = self.optimizers[name]
            for p, g in zip(params, grads):
                p.grad = g if g is None or g.stride() == p.stride() else g.new_empty_strided(p.shape, p.stride()).copy_(g)
            present = [p.grad for p in params if p.grad is not None]
            if self.world > 1 and present:
                flat = torch.cat([g.reshape(-1) for g in present])
                torch.distributed.all_reduce(flat)
                flat /= self.world
                offset = 0
                for g in present:
                    g.copy_(flat[offset : offset + g.numel()].view_as(g))
                    offset += g.numel()
            scaler = self.scalers.get(name)
            if scaler:
                scaler.unscale_(opt)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)


def join_processes(device: str):
    """(device, rank, world) from Accelerate's PartialState, which also joins torchrun's process group."""
    from accelerate import PartialState

    accelerator = torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available())
    # Accelerate joins torchrun's CPU process group (gloo) only when told cpu=True; with "auto" on a machine
    # without an accelerator each process would otherwise train alone and all would write the same folder.
    state = PartialState(cpu=device == "cpu" or (device == "auto" and not accelerator))
    launched = launched_processes()
    if state.num_processes != launched:
        raise ConfigError(f"this is one of {launched} launched processes (WORLD_SIZE={launched}) but only "
                          f"{state.num_processes} joined the process group on device '{device}'; "
                          "set --set train.device=cpu (gloo) or use one CUDA GPU per process")
    if device not in ("auto", "cpu", "cuda"):  # "cuda" alone: Accelerate gives each process its own GPU
        return torch.device(device), state.process_index, state.num_processes
    return state.device, state.process_index, state.num_processes


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512 BF16 (read from /proc/cpuinfo; False where it cannot be read)."""
    try:
        return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device, model: GenerativeModel) -> str:
    """train.precision 'auto' -> bf16 for a model measured to keep its quality in bf16, on hardware that runs it
    natively; fp32 otherwise. Other values are returned unchanged."""
    if precision != "auto":
        return precision
    if not model.bf16_by_default:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def with_fused_step(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer (class, groups, hyper-parameters) rebuilt with ``fused=True`` where its class has a fused
    kernel (Adam, AdamW, SGD); others are returned unchanged. Call before the first step: state is not carried."""
    cls = type(optimizer)
    accepted = inspect.signature(cls).parameters
    if "fused" not in accepted:
        return optimizer
    options = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    groups = [{**g, "fused": True, "foreach": None} for g in optimizer.param_groups]
    try:
        return cls(groups, **{**options, "fused": True, "foreach": None})
    except RuntimeError:  # a device or dtype without the fused kernel: keep the plain one
        return optimizer


def fill_data_shape(cfg: Config, data: DataSplits) -> None:
    """Write the data's image shape and classes into the model config, so config.yaml alone rebuilds it."""
    m = cfg.model
    for key, value in (("image_size", data.image_size), ("channels", data.channels)):
        if getattr(m, key, None) not in (None, value):
            raise ConfigError(f"model.{key}={getattr(m, key)} but the data give {value}; set data.{key} instead")
        setattr(m, key, value)
    if hasattr(m, "num_classes"):
        if data.num_classes == 0:
            raise ConfigError(f"model '{m.name}' is conditional but {cfg.data.name} has no class labels "
                              "(use a folder with one subfolder per class, or data.labels_csv with a 'label' column)")
        m.num_classes = data.num_classes
    if hasattr(m, "validate"):
        m.validate()


class Trainer:
    def __init__(self, cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
                 adapt_batch_size: bool = False):
        """``adapt_batch_size``: train.batch_size is a default rather than the user's choice, so a training split
        smaller than one batch shrinks it (with a warning) instead of stopping with an error."""
        self.cfg, self.progress = cfg, progress
        self.run = RunFolder(out)
        t = cfg.train
        self.device, self.rank, self.world = join_processes(t.device)
        self.is_main = self.rank == 0
        self.time_budget = parse_duration(t.time_budget) if t.time_budget else None

        torch.manual_seed(t.seed)
        self.data = load_data(cfg.data)
        fill_data_shape(cfg, self.data)
        self.model: GenerativeModel = build_model(cfg.model).to(self.device)
        self.memory_format = torch.channels_last if t.channels_last and self.device.type != "mps" else None
        if self.memory_format is not None:
            self.model.to(memory_format=self.memory_format)
        self.precision = resolve_precision(t.precision, self.device, self.model)
        # bf16 on CPU only (fp32 measured no faster); compile builds its own backward
        if t.cpu_bf16_convs and self.device.type == "cpu" and self.precision == "bf16" and not t.compile:
            use_cpu_bf16_convs(self.model)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("--precision fp16 needs a CUDA GPU; on CPU use bf16 (fast on CPUs with AMX/AVX-512 BF16) or fp32")
        if t.compile:  # in place, so parameter names (and checkpoints) are those of the eager model
            for child in self.model.children():
                child.compile()
        self.optimizers = self.model.configure_optimizers()
        if t.fused_optimizer:
            self.optimizers = {name: with_fused_step(opt) for name, opt in self.optimizers.items()}
        use_scaler = self.precision == "fp16"
        self.scalers = {n: torch.amp.GradScaler(self.device.type) for n in self.optimizers} if use_scaler else {}
        self.updater = _Updater(self.optimizers, self.scalers, self.world, t.grad_clip_norm, self.device.type)
        if self.data.train.images is not None:
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

        self.pos = Position()
        self.rollbacks = 0
        self.elapsed = 0.0  # training wall time over all sessions of this run, for time budgets
        if resume:
            self._restore(self.run.load_checkpoint())
        if self.rank > 0:  # same initial weights, different noise per process (also after a resume)
            torch.manual_seed(t.seed + self.rank + 1_000_003 * self.pos.step)
        self.writer = None
        self.quality = None  # the best-weights score, built at the first epoch's end
        if self.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            if not resume:  # best weights of an earlier run in this folder are not this run's
                self.run.best_weights_path.unlink(missing_ok=True)
                self.run.best_info_path.unlink(missing_ok=True)
            self.run.write_config(cfg)

    # state -------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.model.registry_name,
            "model": self.model.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "step": self.pos.step,
            "epoch": self.pos.epoch,
            "batch": self.pos.batch,
            "elapsed": self.elapsed,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "extra": self.model.extra_state(),
        }

    def _restore(self, state: dict) -> None:
        from .errors import RunFolderError

        if state.get("model_name", self.model.registry_name) != self.model.registry_name:
            raise RunFolderError(f"the checkpoint in {self.run.path} is of model '{state['model_name']}', "
                                 f"not '{self.model.registry_name}'")
        try:
            self.model.load_state_dict(state["model"])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise RunFolderError(f"the checkpoint in {self.run.path} does not fit this model's config ({exc})") from None
        for name, scaler in self.scalers.items():
            if name in state.get("scalers", {}):
                scaler.load_state_dict(state["scalers"][name])
        self.pos = Position(state["step"], state["epoch"], state["batch"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.model.load_extra_state(state.get("extra", {}))
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    def sync_buffers(self) -> None:
        """Average floating buffers (BatchNorm running statistics) across processes; parameters are kept equal by
        the gradient average, but each process's statistics come from its own shard."""
        if self.world == 1:
            return
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                torch.distributed.all_reduce(buffer)
                buffer /= self.world

    def _roll_back(self, reason: str) -> None:
        """Restore the newest checkpoint and scale every learning rate by train.rollback_lr_factor."""
        t = self.cfg.train
        self.rollbacks += 1
        failed_at, elapsed = self.pos.step + 1, self.elapsed  # the step that diverged
        in_force = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.optimizers.items()}
        self._restore(self.run.load_checkpoint())
        self.elapsed = elapsed  # the failed stretch still counts against a time budget
        for name, opt in self.optimizers.items():  # compounding: scale the rates in force, not the checkpoint's
            for group, lr in zip(opt.param_groups, in_force[name]):
                group["lr"] = lr * t.rollback_lr_factor
        lrs = {name: opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}
        self.log({"event": "rollback", "step": self.pos.step, "failed_at_step": failed_at, "reason": reason,
                  "rollback": self.rollbacks, **{f"lr_{n}": v for n, v in lrs.items()}})
        if self.is_main:
            warnings.warn(f"{reason}; rolled back to step {self.pos.step} and scaled the learning rate by "
                          f"{t.rollback_lr_factor} (rollback {self.rollbacks} of at most {t.max_rollbacks})")

    def save_checkpoint(self) -> None:
        self.sync_buffers()
        if self.is_main:
            self.run.save_checkpoint(self._state(), self.pos.step, self.cfg.train.keep_checkpoints)

    # logging -----------------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        if not self.is_main:
            return
        with open(self.run.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.cfg.train.tensorboard:
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.run.path))
            prefix = "epoch/" if row.get("event") == "epoch" else "train/"
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(prefix + key, value, row["step"])

    # evaluation --------------------------------------------------------------------------------------
    def monitor_likelihood(self, limit: int) -> dict | None:
        """The per-epoch monitor: mean test ELBO (or an SSIM model's loss) over up to ``limit`` test images under the
        training precision, on raw pixels and, for conditional models, with the true label. Named ``monitor_*``
        because it is not the evaluation's number (``likelihood`` in summary.json and eval/metrics.json)."""
        if not self.model.has_encoder:
            return None
        test = self.data.test
        n = min(limit, len(test))
        batches = epoch_batches(n, 500, 0, 0, shuffle=False, drop_last=False)
        totals = {"elbo": 0.0, "nll": 0.0, "kl": 0.0}
        self.model.eval()
        with torch.random.fork_rng(devices=[]), _autocast(self.precision, self.device):
            torch.manual_seed(self.cfg.train.seed)
            for batch in iterate_batches(test, batches, self.device):
                out = self.model.elbo(batch["x"], batch["y"] if self.model.is_conditional else None)
                for key in totals:
                    totals[key] += float(out[key].sum())
        self.model.train()
        mean = {k: v / n for k, v in totals.items()}
        if not self.model.has_likelihood:
            return {"monitor_loss": -mean["elbo"], "monitor_recon": mean["nll"], "monitor_kl": mean["kl"]}
        return {"monitor_elbo": mean["elbo"], "monitor_nll": mean["nll"], "monitor_kl": mean["kl"]}

    def held_out_likelihood(self, limit: int = 10_000) -> dict | None:
        """The evaluation's likelihood numbers (``metrics.likelihood.likelihood_metrics``, fp32, K = 0) on up to
        ``limit`` test images: the same names and definitions as ``vaelab evaluate``'s eval/metrics.json."""
        if not self.model.has_encoder:
            return None
        from .metrics.likelihood import likelihood_metrics

        test = self.data.test
        x = first_images(test, limit)
        y = None if test.labels is None else test.labels[: len(x)]
        try:
            with torch.random.fork_rng(devices=[]):
                return likelihood_metrics(self.model, x, y, k=0, seed=self.cfg.train.seed, progress=False)
        finally:
            self.model.train()

    def write_grids(self, tag: str) -> None:
        if not self.is_main or self.cfg.train.num_sample_images == 0:
            return
        n = self.cfg.train.num_sample_images
        nrow = max(1, int(math.ceil(math.sqrt(n))))
        self.run.samples_dir.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        y = None
        if self.model.is_conditional:  # whole rows: one column per class
            k = self.model.config.num_classes
            n = max(1, math.ceil(n / k)) * k
            y = (torch.arange(n) % k).to(self.device)
            nrow = k
        samples = self.model.sample(n, y=y, generator=torch.Generator().manual_seed(self.cfg.train.seed))
        save_image(samples.float().cpu(), self.run.samples_dir / f"{tag}-samples.png", nrow=nrow, padding=1)
        if self.model.has_encoder:
            x, labels = spaced_images(self.data.test, 32)  # spread over the split, whose order may follow the classes
            x = x.to(self.device)
            labels = None if labels is None else labels.to(self.device)
            with torch.inference_mode():
                recon = self.model.reconstruct(x, labels if self.model.is_conditional else None)
            per_row = min(8, len(x))  # originals above their reconstructions, row by row
            pad = (-len(x)) % per_row  # a short last row is filled with blank images
            x, recon = (torch.cat([t.float(), t.new_zeros(pad, *t.shape[1:]).float()]) for t in (x, recon))
            rows = [t for i in range(0, len(x), per_row) for t in (x[i : i + per_row], recon[i : i + per_row])]
            save_image(torch.cat(rows).cpu(), self.run.samples_dir / f"{tag}-reconstructions.png",
                       nrow=per_row, padding=1)
        self.model.train()

    # the loop ----------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimizer step of the model on ``batch`` in the run's memory layout and precision; its losses."""
        if self.memory_format is not None:
            batch["x"] = batch["x"].contiguous(memory_format=self.memory_format)
        with _autocast(self.precision, self.device):
            return self.model.training_step(batch, self.updater)

    def fit(self) -> dict:
        stop = {"signal": False}

        def request_stop(signum, frame):
            if stop["signal"]:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            stop["signal"] = True

        handlers = {}
        if self.is_main and sys.platform != "win32":
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    handlers[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (a notebook runner, say): no handlers
                handlers = {}
        try:
            return self._loop(stop)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.writer is not None:
                self.writer.close()

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
            tick = time.perf_counter()
            rolled_back = False
            for batch in iterate_batches(self.data.train, batches[self.pos.batch :], self.device, self.cfg.data.num_workers):
                self.updater.step = self.pos.step
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
        return self._finish(finished_reason)

    def _end_of_epoch(self, images_per_s: float) -> None:
        t = self.cfg.train
        e = self.pos.epoch
        # The checkpoint first: nothing optional after it can lose the epoch's training.
        if t.checkpoint_every_epochs and (e % t.checkpoint_every_epochs == 0 or e == t.epochs):
            self.save_checkpoint()
        else:
            self.sync_buffers()
        row = {"event": "epoch", "step": self.pos.step, "epoch": e, "images_per_s": images_per_s}
        metrics = self.monitor_likelihood(t.eval_images)
        if metrics:
            row.update(metrics)
        if t.track_best and self.is_main:
            row.update(self._optional("the best-weights score", self._track_best) or {})
        self.log(row)
        if self.is_main and self.progress:
            shown = ""
            if metrics:
                shown = (f"  test ELBO {metrics['monitor_elbo']:.2f} nats ({self.precision})" if "monitor_elbo" in metrics
                         else f"  test loss {metrics['monitor_loss']:.2f}")
            if "sample_fid" in row:
                shown += f"  sample FID {row['sample_fid']:.1f}" + (" (best)" if row.get("best") else "")
            print(f"epoch {e}/{t.epochs}  step {self.pos.step}  {images_per_s:.0f} img/s{shown}", flush=True)
        if t.sample_every_epochs and (e % t.sample_every_epochs == 0 or e == t.epochs):
            self._optional("the sample grids", lambda: self.write_grids(f"epoch-{e:04d}"))

    def _optional(self, what: str, work):
        """Run optional end-of-epoch work; a failure warns (naming it) and training goes on. Returns its result."""
        try:
            return work()
        except Exception as exc:  # noqa: BLE001  (optional work must never end a run)
            message = f"{what} failed at epoch {self.pos.epoch} ({type(exc).__name__}: {exc}); training goes on"
            warnings.warn(message)
            self.log({"event": "warning", "step": self.pos.step, "epoch": self.pos.epoch, "message": message})
            return None

    def _track_best(self) -> dict:
        """Score this epoch's samples; keep the weights as model-best.safetensors when they beat the best so far."""
        with torch.random.fork_rng(devices=[]):  # the classifier's training reseeds; resume must stay exact
            return self._score_and_keep()

    def _score_and_keep(self) -> dict:
        from .metrics.quality import SampleQuality

        if self.quality is None:
            self.quality = SampleQuality(self.data, self.cfg.data, n=self.cfg.train.best_samples,
                                         seed=self.cfg.train.seed, progress=self.progress)
        score = self.quality.score(self.model)
        if score is None or not math.isfinite(score):
            return {}
        best = self.run.best_info()
        improved = best is None or score < best["sample_fid"]
        if improved:
            self.run.save_weights(self.model, best_info={"sample_fid": score, "epoch": self.pos.epoch,
                                                         "step": self.pos.step, **self.quality.settings})
        return {"sample_fid": score, "best": improved}

    def _finish(self, reason: str) -> dict:
        if reason != "epochs":  # stopped inside an epoch: keep its state and its grids
            self.save_checkpoint()
            self._optional("the sample grids", lambda: self.write_grids(f"step-{self.pos.step:08d}"))
        summary = {
            "model": self.model.registry_name,
            "data": self.data.description,
            "stopped_by": reason,
            "steps": self.pos.step,
            "epochs_done": self.pos.epoch,
            "train_seconds": self.elapsed,
            "images_per_s": self.pos.step * self.cfg.train.batch_size * self.world / max(self.elapsed, 1e-9),
            "precision": self.precision,
            "device": str(self.device),
            "processes": self.world,
        }
        self.sync_buffers()
        likelihood = self.held_out_likelihood()
        if likelihood:
            summary["likelihood"] = likelihood
        if self.is_main:
            self.run.save_weights(self.model)
            atomic_write_text(self.run.summary_path, json.dumps(summary, indent=2) + "\n")
            from .plots import plot_training_curves

            self._optional("the training curves", lambda: plot_training_curves(self.run.read_metrics(),
                                                                             self.run.path / "curves.png"))
            numbers = {**summary, **(likelihood or {})}
            self.log({"event": "end", "step": self.pos.step,
                      **{k: v for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        return summary


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
          adapt_batch_size: bool = False) -> dict:
    """Train ``cfg`` into run folder ``out`` (continuing its newest checkpoint when ``resume``); returns the summary.
    ``adapt_batch_size``: see ``Trainer``."""
    return Trainer(cfg, out, resume=resume, progress=progress, adapt_batch_size=adapt_batch_size).fit()
