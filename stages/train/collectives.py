"""The few cross-process operations of the training loop, each a no-op on one process.

Processes are Accelerate's (or torchrun's) process group; gradients are all-reduced per phase by hand
(`phases.reduce_gradients`) instead of through a DDP wrapper, whose unused-parameter checks clash with
the phase scheme (Gmain/Greg/Dmain/Dreg touch different parameter sets).
"""

from __future__ import annotations

from typing import Any

import torch


class Collectives:
    """`dist` False: a single process, every operation returns its input."""

    def __init__(self, dist: bool) -> None:
        self.dist = dist

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.dist:
            return t
        t = t.to(self.device)
        torch.distributed.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on one (all processes stop at the same step even when a
        signal reached them at different times)."""
        if not self.dist:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if not self.dist:
            return [obj]
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    def union(self, names: list[str]) -> list[str]:
        """The sorted union of name lists over processes (every process then reduces the same layout)."""
        return sorted({n for part in self.gather_objects(names) for n in part})

    def broadcast_modules(self, *modules: torch.nn.Module | None) -> None:
        """Rank 0's parameters and buffers everywhere: each process built its networks from its own seed,
        and the run's weights are rank 0's (what DDP would broadcast at construction)."""
        if not self.dist:
            return
        for module in modules:
            for t in [*module.parameters(), *module.buffers()] if module is not None else []:
                torch.distributed.broadcast(t.data, src=0)
