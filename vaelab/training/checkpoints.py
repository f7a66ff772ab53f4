"""Training state for exact resume: what a checkpoint holds, and putting it back.

Resume is exact on CPU: each epoch's batch order is a pure function of (seed, epoch), the checkpoint keeps the
position inside the epoch and the RNG states, and evaluation runs under a forked RNG so it never shifts the
training randomness. The run folder (``run.RunFolder``) writes checkpoints atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RunFolderError

# The layout of the dict below; a checkpoint of a newer layout is refused with a message instead of misread.
CHECKPOINT_FORMAT = 1


@dataclass
class Position:
    """Where training is: ``step`` optimizer steps done; ``batch`` batches done inside epoch ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def training_state(model, optimizers: dict, scalers: dict, pos: Position, elapsed: float, average=None) -> dict:
    """Everything resume needs: weights, optimizer and scaler states, position, training time, RNG states, the
    model's own extra state (a controller's k_t) and the weight average (``average``: a ``WeightAverage`` or None)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": model.registry_name,
        "model": model.state_dict(),
        "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
        "scalers": {n: s.state_dict() for n, s in scalers.items()},
        "step": pos.step,
        "epoch": pos.epoch,
        "batch": pos.batch,
        "elapsed": elapsed,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "extra": model.extra_state(),
        "average": average.state_dict() if average is not None else None,
    }


def restore_training_state(state: dict, model, optimizers: dict, scalers: dict, where: Path,
                           average=None) -> tuple[Position, float]:
    """Put ``state`` (from ``training_state``) back into the model, optimizers, scalers, weight average and RNGs;
    returns the position and the training time so far. ``where``: the run folder, named in errors."""
    if state.get("format", CHECKPOINT_FORMAT) > CHECKPOINT_FORMAT:
        raise RunFolderError(f"the checkpoint in {where} has format {state['format']}, newer than this vaelab reads "
                             f"({CHECKPOINT_FORMAT}); upgrade vaelab to resume it")
    if state.get("model_name", model.registry_name) != model.registry_name:
        raise RunFolderError(f"the checkpoint in {where} is of model '{state['model_name']}', "
                             f"not '{model.registry_name}'")
    try:
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if average is not None:
            if state.get("average") is None:  # a run that started without train.ema_decay: average from here on
                average.load_state_dict({"weights": state["model"], "updates": 0})
            else:
                average.load_state_dict(state["average"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise RunFolderError(f"the checkpoint in {where} does not fit this model's config ({exc})") from None
    for name, scaler in scalers.items():
        if name in state.get("scalers", {}):
            scaler.load_state_dict(state["scalers"][name])
    model.load_extra_state(state.get("extra", {}))
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return Position(state["step"], state["epoch"], state["batch"]), float(state.get("elapsed", 0.0))


def average_buffers(model, world: int) -> None:
    """Average floating buffers (BatchNorm running statistics) across processes; parameters are kept equal by the
    gradient average, but each process's statistics come from its own shard."""
    if world == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            torch.distributed.all_reduce(buffer)
            buffer /= world


def learning_rates_in_force(optimizers: dict) -> dict[str, list[tuple[float, float | None]]]:
    """Each group's (rate, base rate of the lr schedule or None), by optimizer: what a rollback scales."""
    return {name: [(g["lr"], g.get("initial_lr")) for g in opt.param_groups] for name, opt in optimizers.items()}


def scale_learning_rates(optimizers: dict, in_force: dict[str, list[tuple[float, float | None]]],
                         factor: float) -> dict[str, float]:
    """Set every group's rate (and its schedule's base rate) to ``factor`` times the one ``in_force`` (by optimizer,
    by group; ``learning_rates_in_force``) before a rollback restored the checkpoint's; returns each optimizer's first
    rate."""
    for name, opt in optimizers.items():  # compounding: scale the rates in force, not the checkpoint's
        for group, (lr, base) in zip(opt.param_groups, in_force[name]):
            group["lr"] = lr * factor
            if base is not None:
                group["initial_lr"] = base * factor
    return {name: opt.param_groups[0]["lr"] for name, opt in optimizers.items()}
