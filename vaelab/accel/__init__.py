"""The one place for speed code. Models are plain PyTorch; ``prepare`` makes a model and its optimizers fast on a
device: precision (autocast, GradScaler), channels-last layout, fused optimizer steps, the CPU bf16 conv rewrites
and ``torch.compile``. Every lever has a switch in ``TrainConfig`` and falls back to torch's own path where it does
not apply. What each lever measured is in benchmarks/RESULTS.md, not here.
"""

from __future__ import annotations

import inspect
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .cpu_bf16_convs import use_cpu_bf16_convs
from .layout import use_channels_last

# The precision policy: the models that train in bf16 under precision "auto", each measured over 3 seeds to keep its
# quality in bf16 (benchmarks/RESULTS.md, "bf16 against fp32"). Every other model trains in fp32 unless asked.
BF16_BY_DEFAULT = frozenset({"vae", "cvae", "vaegan", "avae"})


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512 BF16 (read from /proc/cpuinfo; False where it cannot be read)."""
    try:
        return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device, model_name: str) -> str:
    """train.precision 'auto' -> bf16 for a model of ``BF16_BY_DEFAULT`` on hardware that runs bf16 natively, fp32
    otherwise. Other values are returned unchanged."""
    if precision != "auto":
        return precision
    if model_name not in BF16_BY_DEFAULT:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (fp32: none)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


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


@dataclass
class Prepared:
    """What ``prepare`` decided: the resolved precision, the batches' memory layout, the optimizers (by the model's
    names) and, for fp16, their gradient scalers."""

    device: torch.device
    precision: str
    memory_format: torch.memory_format | None
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, torch.amp.GradScaler]

    def autocast(self):
        return autocast(self.precision, self.device)

    def to_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch (B, C, H, W) in the model's memory layout."""
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)


def prepare(model: nn.Module, device: torch.device, precision: str, config) -> Prepared:
    """Move ``model`` to ``device`` and apply the levers ``config`` (a ``TrainConfig``) switches on; build its
    optimizers (``model.configure_optimizers()``). ``precision``: fp32, bf16, fp16 or auto (``resolve_precision``).
    The model keeps its parameter names, so checkpoints are those of the plain model."""
    model.to(device)
    memory_format = None
    if config.channels_last and device.type != "mps":
        use_channels_last(model)
        memory_format = torch.channels_last
    precision = resolve_precision(precision, device, model.registry_name)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; on CPU use bf16 (fast on CPUs with AMX/AVX-512 BF16) "
                          "or fp32")
    # bf16 on CPU only (fp32 is no faster); compile builds its own backward
    if config.cpu_bf16_convs and device.type == "cpu" and precision == "bf16" and not config.compile:
        use_cpu_bf16_convs(model)
    if config.compile:  # in place, so parameter names (and checkpoints) are those of the eager model
        for child in model.children():
            child.compile()
    optimizers = model.configure_optimizers()
    if config.fused_optimizer:
        optimizers = {name: with_fused_step(opt) for name, opt in optimizers.items()}
    scalers = {n: torch.amp.GradScaler(device.type) for n in optimizers} if precision == "fp16" else {}
    return Prepared(device, precision, memory_format, optimizers, scalers)
