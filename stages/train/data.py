"""Dataset access for training: a deterministic infinite batch sampler whose position is resumable."""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers its exit handler first, so ours (below) runs before it
import signal
from collections.abc import Iterator

import numpy as np
import torch


class InfiniteBatchSampler(torch.utils.data.Sampler):
    """Global batches from an endless sequence of seeded per-epoch permutations.

    Item `i` of the sequence is `perm(seed, i // n)[i % n]`, so the sequence is a pure function of
    (seed, position): saving `position` (images consumed over all processes) resumes exactly, and
    process `rank` of `world` takes its slice of every global batch.
    """

    def __init__(self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if size <= 0:
            raise ValueError("empty dataset")
        if batch % world:
            raise ValueError(f"batch {batch} is not divisible by {world} processes")
        self.size, self.batch, self.seed, self.rank, self.world, self.start = size, batch, seed, rank, world, start
        self._perm_epoch = -1
        self._perm = np.arange(size)

    def _item(self, i: int) -> int:
        epoch, off = divmod(i, self.size)
        if epoch != self._perm_epoch:
            self._perm = np.random.RandomState([self.seed, epoch]).permutation(self.size)
            self._perm_epoch = epoch
        return int(self._perm[off])

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch // self.world
        pos = self.start
        while True:
            first = pos + self.rank * local
            yield [self._item(i) for i in range(first, first + local)]
            pos += self.batch

    def __len__(self) -> int:  # DataLoader asks; the sequence is endless
        return 2**62


def _ignore_stop_signals(_worker_id: int) -> None:
    # SIGTERM/SIGINT usually reach the whole process group (Ctrl-C, Slurm, Kubernetes, `kill -- -PGID`).
    # The main process stops gracefully and writes a checkpoint; a worker that died of the signal first
    # would make the next batch raise instead. Workers leave when the main process shuts the loader down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    # Workers ignore SIGTERM (above), so multiprocessing's own exit handler, which terminates daemonic
    # children with SIGTERM and then joins them, would wait forever for a worker that a crash left
    # behind (exception, broken stdout pipe). Kill them outright first; a clean exit has none left.
    # PyTorch's SIGCHLD handler would raise "worker killed" into this loop: restore the default first.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = [c for c in multiprocessing.active_children() if c.daemon]
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)


atexit.register(_kill_leftover_workers)


def make_loader(dataset, sampler: InfiniteBatchSampler, loader_kwargs: dict, seed: int) -> torch.utils.data.DataLoader:
    """`loader_kwargs`: the run's `data_loader_kwargs` (num_workers, prefetch_factor)."""
    workers = loader_kwargs.get("num_workers", 0)
    # An explicit generator keeps the DataLoader from drawing its base seed from the global torch RNG,
    # whose state is part of the checkpoint.
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, prefetch_factor=loader_kwargs.get("prefetch_factor"),
        generator=torch.Generator().manual_seed(seed), persistent_workers=False,
        worker_init_fn=_ignore_stop_signals if workers else None,
    )
