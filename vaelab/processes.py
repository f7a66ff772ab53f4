"""The processes of a ``torchrun`` / ``accelerate launch`` group: joining it, rank and world, the one rank-0
decision, seeds, and work split across the processes for evaluation and sampling.

Training splits batches itself (``data.epoch_batches``); ``map_chunks`` splits everything after it: a job is a list
of numbered chunks, each process computes every ``world``-th chunk, and every process gets all results in chunk
order. A chunk's randomness is seeded by its number, so the results do not depend on the number of processes.

Each kind of random draw has a seed stream of its own (``stream_seed``), so two kinds never share a generator seed:
the latent draws that chose a run's best epoch during training are never among the draws ``vaelab evaluate``
reports, whatever the training and evaluation seeds.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def launched_processes() -> int:
    """How many processes the launcher (torchrun / accelerate launch) started; 1 for a plain command."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes): the process group's, or before it is joined the launcher's
    (RANK, WORLD_SIZE); (0, 1) for a plain command."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), launched_processes()


def is_main_process() -> bool:
    """Whether this process is the one that writes files and prints (rank 0)."""
    return rank_and_world()[0] == 0


def join_processes(device: str) -> tuple[torch.device, int, int]:
    """(device, rank, world) from Accelerate's PartialState, which also joins torchrun's process group."""
    from accelerate import PartialState

    from .errors import ConfigError

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


def decided_on_main_process(device: str, decide: Callable[[], T]) -> T:
    """``decide()`` on rank 0, its answer on every process (joining the group on ``device`` if needed): all processes
    of a launch must use one run folder, and checking for an existing one races with rank 0 creating it."""
    if launched_processes() == 1:
        return decide()
    join_processes(device)
    answer = [decide() if is_main_process() else None]
    torch.distributed.broadcast_object_list(answer, src=0)
    return answer[0]


def process_seed(seed: int, rank: int, step: int) -> int:
    """The noise seed of training process ``rank`` > 0 from optimizer step ``step`` on: the same initial weights on
    every process (seeded with ``seed``), different noise per process, also after a resume."""
    return seed + rank + 1_000_003 * step


def map_chunks(compute: Callable[[int], T], count: int) -> list[T]:
    """``[compute(0), ..., compute(count - 1)]`` on every process; process r computes chunks r, r + world, ...

    Results must be CPU tensors or plain Python values (they are gathered with ``all_gather_object``).
    """
    rank, world = _group_rank_and_world()
    mine = {i: compute(i) for i in range(rank, count, world)}
    if world == 1:
        return [mine[i] for i in range(count)]
    parts: list[dict | None] = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    merged = {i: value for part in parts for i, value in part.items()}
    return [merged[i] for i in range(count)]


SEED_STREAMS = {
    "likelihood": 0,  # the likelihood's importance samples
    "evaluate_samples": 1,  # evaluate's latent draws (the sample-side metrics)
    "best_weights": 2,  # the per-epoch best-weights score during training
    "grids": 3,  # the per-epoch sample grids
    "utility": 4,  # evaluate's synthetic-data utility draws
    "sampler_fit": 5,  # the draws that choose a latent sampler's settings (vaelab.samplers)
    "pixel_noise": 6,  # the likelihood's dequantisation or binarisation noise, per batch
}


def stream_seed(stream: str, seed: int, chunk: int = 0) -> int:
    """The generator seed of chunk ``chunk`` of a job seeded ``seed`` in seed stream ``stream`` (SEED_STREAMS).

    Injective in (stream, seed, chunk) for chunks below 1,000,003: the stream sits in the low 3 bits, so seeds of two
    streams never coincide."""
    if stream not in SEED_STREAMS:
        raise KeyError(f"unknown seed stream {stream!r}; known: {', '.join(SEED_STREAMS)}")
    return (seed * 1_000_003 + chunk) * 8 + SEED_STREAMS[stream]


def _group_rank_and_world() -> tuple[int, int]:
    """(rank, world) of the joined process group; (0, 1) when none is joined (work is then not split)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    if _group_rank_and_world()[1] > 1:
        torch.distributed.barrier()


def leave_process_group() -> None:
    """Wait for every process, then close the process group (a no-op outside one).

    A process that exits while its gloo group is still open can abort in the group's destructor ("terminate
    called without an active exception") while the others are still using it; commands call this on success.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
