"""Work split across the processes of a ``torchrun`` / ``accelerate launch`` group, for evaluation and sampling.

Training splits batches itself (``data.epoch_batches``); this module splits everything after it: a job is a list
of numbered chunks, each process computes every ``world``-th chunk, and every process gets all results in chunk
order. A chunk's randomness is seeded by its number, so the results do not depend on the number of processes.
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
    """(this process's rank, number of processes); (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def map_chunks(compute: Callable[[int], T], count: int) -> list[T]:
    """``[compute(0), ..., compute(count - 1)]`` on every process; process r computes chunks r, r + world, ...

    Results must be CPU tensors or plain Python values (they are gathered with ``all_gather_object``).
    """
    rank, world = rank_and_world()
    mine = {i: compute(i) for i in range(rank, count, world)}
    if world == 1:
        return [mine[i] for i in range(count)]
    parts: list[dict | None] = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    merged = {i: value for part in parts for i, value in part.items()}
    return [merged[i] for i in range(count)]


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` of a job seeded ``seed``."""
    return seed * 1_000_003 + chunk


def barrier() -> None:
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()


def leave_process_group() -> None:
    """Wait for every process, then close the process group (a no-op outside one).

    A process that exits while its gloo group is still open can abort in the group's destructor ("terminate
    called without an active exception") while the others are still using it; commands call this on success.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
