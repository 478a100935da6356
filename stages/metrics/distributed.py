"""The few collectives the metrics need, behind one small interface.

Work is split by *global batch index* (batch b goes to process b % P) and gathered back in index order, so a
result depends on the seed and batch size only, never on the number of processes. `from_accelerate()` builds
the group of the current Accelerate/torchrun launch; tests substitute a thread-backed group.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ProcessGroup(Protocol):
    num_processes: int
    rank: int

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        ...


class SingleProcess:
    num_processes = 1
    rank = 0

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]


class TorchDistributed:
    """torch.distributed (gloo or nccl) as set up by `accelerate launch` / torchrun."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.num_processes = dist.get_world_size()
        self.rank = dist.get_rank()

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.num_processes
        self._dist.all_gather_object(out, obj)
        return out


def from_accelerate() -> ProcessGroup:
    """The group of the running launch: `PartialState` initializes torch.distributed from the launcher's env."""
    try:
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate is a pipeline dependency
        return SingleProcess()
    import os

    import torch
    import torch.distributed as dist

    state = PartialState()
    if not dist.is_available():
        return SingleProcess()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A plain torchrun launch on CPU: PartialState leaves the group to the caller there.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized() and (state.num_processes > 1 or dist.get_world_size() > 1):
        return TorchDistributed()
    return SingleProcess()


def is_main(group: ProcessGroup) -> bool:
    return group.rank == 0


def my_batches(num_items: int, batch_size: int, group: ProcessGroup) -> list[tuple[int, int, int]]:
    """(global batch index, start, stop) of the batches this process handles."""
    starts = range(0, num_items, batch_size)
    return [(b, s, min(s + batch_size, num_items)) for b, s in enumerate(starts)][group.rank::group.num_processes]


def gather_rows(parts: list[tuple[int, np.ndarray]], group: ProcessGroup) -> np.ndarray:
    """Concatenate every process's (start, rows) blocks in global order."""
    blocks = [b for proc in group.all_gather(parts) for b in proc]
    blocks.sort(key=lambda sb: sb[0])
    return np.concatenate([rows for _, rows in blocks], axis=0)


def sum_arrays(arrays: list[np.ndarray], group: ProcessGroup) -> list[np.ndarray]:
    """Elementwise sums over processes, added in rank order so every process gets identical bits."""
    gathered = group.all_gather(arrays)
    return [sum((g[i] for g in gathered[1:]), start=gathered[0][i].copy()) for i in range(len(arrays))]
