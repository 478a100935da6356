"""Throughput timing shared by the benchmark scripts and gpu-check: images per second of a callable, alone or
several measured in turn so they share the machine's noise. Callables synchronize themselves (CUDA)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def images_per_second(fn: Callable[[], Any], batch: int, min_time: float, warmup: int = 2,
                      min_calls: int = 3) -> float:
    """`batch` x calls / seconds, over at least `min_time` seconds and `min_calls` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= min_calls:
            return calls * batch / elapsed


def best_rates(fns: dict[str, Callable[[], Any]], batch: int, rounds: int, min_time: float, warmup: int = 1,
               min_calls: int = 1) -> dict[str, float]:
    """Best-of-`rounds` images/s of each callable; within a round the callables run one after the other."""
    for fn in fns.values():  # warm-up: allocator, oneDNN primitive cache, lazily built filters
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = max(best[name], images_per_second(fn, batch, min_time, warmup=0, min_calls=min_calls))
    return best
