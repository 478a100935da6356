"""Dynamic batching for model servers (Triton's idea): requests that arrive within a short window of the oldest
waiting one run through the model together, up to a maximum batch; a window of 0 runs each request on its own.
Shared by `python -m stages.export serve` and `python -m stages.generate explore`; knows nothing of networks.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from stages.common.errors import BadInput

MAX_BODY_BYTES = 16 * 2**20  # a KServe JSON request of 64 seeds x 512 floats is under 1 MiB
MAX_SEED = 2**32 - 1         # np.random.RandomState takes seeds in [0, 2**32)


class RequestError(ValueError):
    """A malformed request: answered with `status` (400 unless told) and {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Overloaded(RuntimeError):
    """The queue is full or a request waited too long: 503 with Retry-After, the client may try again."""


# ---------------------------------------------------------------------------------------------
# dynamic batching


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How a server batches and what it holds at most (the serve command's defaults; explore has its own)."""

    window_ms: float = 5.0         # wait this long after the oldest waiting request for others (0 = no batching)
    max_queue: int = 256           # images waiting for (or, unbatched, in) the model; more -> 503 at once
    max_connections: int = 64      # open connections, one thread each; more -> 503 and closed
    timeout_s: float = 30.0        # idle connections are closed; a request queued this long gets 503

    def __post_init__(self) -> None:
        if not 0 <= self.window_ms <= 10_000:
            raise BadInput("batch window must be in 0..10000 ms")
        if self.max_queue < 1 or self.max_connections < 1:
            raise BadInput("max_queue and max_connections must be >= 1")
        if not 0 < self.timeout_s <= 3600:
            raise BadInput("timeout must be in (0, 3600] s")

    @classmethod
    def of(cls, cfg: Any) -> BatchOptions:
        """The options a config carries (`batch_window_ms`, `max_queue`, `max_connections`, `timeout_s`), the
        defaults for the fields it lacks."""
        names = {"window_ms": "batch_window_ms", "max_queue": "max_queue", "max_connections": "max_connections",
                 "timeout_s": "timeout_s"}
        return cls(**{k: getattr(cfg, v) for k, v in names.items() if getattr(cfg, v, None) is not None})


@dataclasses.dataclass
class BatchInfo:
    """What a request's render cost: the batch it ran in (images), the model time and the time it queued."""

    batch: int = 1
    run_ms: float = 0.0
    queue_ms: float = 0.0


class _Job:
    __slots__ = ("arrived", "done", "error", "info", "item", "key", "result", "size")

    def __init__(self, item: Any, size: int, key: Hashable) -> None:
        self.item, self.size, self.key = item, size, key
        self.arrived = time.perf_counter()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.info = BatchInfo()


class DynamicBatcher:
    """Run requests through `run(items) -> results` (one result per item, in order) in batches.

    A request of `size` images waits at most `window_s` after the oldest waiting request for others with the
    same `key(item)` (requests of different keys cannot share a run: another network, another noise mode); a
    batch holds at most `max_batch` images and starts early when full. The window is counted from the oldest
    request's arrival, so a queue that filled while the model was busy runs at once (as Triton's
    `max_queue_delay_microseconds`). One worker thread runs the model: batches run one after another, and the
    model's own threads (onnxruntime, torch) use the cores.

    `expected()`, when given, says how many requests could be waiting at most (a server: its open connections,
    each holding at most one request): once that many are queued nobody else can join, so the batch runs without
    waiting out the window. One client alone then pays no window at all, and 16 keep-alive clients get batches
    of 16 as soon as the 16th request is in.

    `window_s = 0` is no batching: `submit` runs `run([item])` on the caller's thread (the server's behaviour
    before batching, kept as the benchmark's baseline). Either way at most `max_queue` images are admitted at a
    time; more raise `Overloaded`. A batch that raises is retried item by item, so one bad request fails alone.
    """

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_batch: int, window_s: float, max_queue: int,
                 key: Callable[[Any], Hashable] = lambda item: None, timeout_s: float = 30.0,
                 expected: Callable[[], int] | None = None, name: str = "batcher") -> None:
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, window_s >= 0")
        self.run, self.key, self.expected = run, key, expected
        self.max_batch, self.window_s, self.max_queue, self.timeout_s = max_batch, window_s, max_queue, timeout_s
        self._cv = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._admitted = 0  # images queued or running (unbatched: running on callers' threads)
        self._closed = False
        self.stats: dict[str, Any] = {"requests": 0, "images": 0, "batches": 0, "rejected": 0, "failed": 0,
                                      "batch_sizes": {}}
        self._worker: threading.Thread | None = None
        if window_s > 0:
            self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
            self._worker.start()

    @property
    def batching(self) -> bool:
        return self._worker is not None

    def submit(self, item: Any, size: int = 1) -> tuple[Any, BatchInfo]:
        """The item's result and what it cost; raises the run's exception, or `Overloaded`."""
        if not 1 <= size <= self.max_batch:
            raise ValueError(f"a request holds 1..{self.max_batch} images, got {size}")
        job = _Job(item, size, self.key(item))
        with self._cv:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if self._admitted + size > self.max_queue:
                self.stats["rejected"] += 1
                raise Overloaded(f"busy: {self._admitted} images queued (at most {self.max_queue}); retry shortly")
            self._admitted += size
            if self._worker is not None:
                self._queue.append(job)
                self._cv.notify_all()
        if self._worker is None:
            try:
                self._run_jobs([job])
            finally:
                with self._cv:
                    self._admitted -= size
        elif not job.done.wait(self.timeout_s):
            with self._cv:
                if job in self._queue:  # still waiting: give up on it; a running job is waited for
                    self._queue.remove(job)
                    self._admitted -= size
                    self.stats["rejected"] += 1
                    raise Overloaded(f"queued for more than {self.timeout_s:g} s; retry shortly")
            job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result, job.info

    def poke(self) -> None:
        """Something `expected()` counts has changed (a connection closed): look at the queue again."""
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        """Stop the worker; requests still queued get `Overloaded`."""
        with self._cv:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in pending:
            job.error = Overloaded("the server is shutting down")
            job.done.set()
        if self._worker is not None:
            self._worker.join(timeout=10)

    def _take(self) -> list[_Job]:
        """The next batch: the oldest job and the later ones of its key that fit, once the window is over or
        the batch is full. Jobs of other keys keep their place."""
        with self._cv:
            while True:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return []
                first = self._queue[0]
                batch, n = [], 0
                for job in self._queue:
                    if job.key == first.key and n + job.size <= self.max_batch:
                        batch.append(job)
                        n += job.size
                left = first.arrived + self.window_s - time.perf_counter()
                everyone_in = self.expected is not None and len(self._queue) >= self.expected()
                if n >= self.max_batch or left <= 0 or everyone_in:
                    for job in batch:
                        self._queue.remove(job)
                    return batch
                self._cv.wait(left)

    def _loop(self) -> None:
        while batch := self._take():
            try:
                self._run_jobs(batch)
            finally:
                with self._cv:
                    self._admitted -= sum(job.size for job in batch)

    def _run_jobs(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        n = sum(job.size for job in jobs)
        try:
            results = list(self.run([job.item for job in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(jobs)} items")
            for job, result in zip(jobs, results):
                job.result = result
        except Exception as exc:  # handed to the waiting request, never lost
            if len(jobs) > 1:  # find the culprit: the others must not fail with it
                for job in jobs:
                    self._run_jobs([job])
                return
            jobs[0].error = exc
            with self._cv:
                self.stats["failed"] += 1
        run_ms = (time.perf_counter() - start) * 1e3
        with self._cv:
            s = self.stats
            s["requests"] += len(jobs)
            s["images"] += n
            s["batches"] += 1
            s["batch_sizes"][n] = s["batch_sizes"].get(n, 0) + 1
        for job in jobs:
            job.info = BatchInfo(batch=n, run_ms=run_ms, queue_ms=(start - job.arrived) * 1e3)
            job.done.set()

    def snapshot_stats(self) -> dict[str, Any]:
        with self._cv:
            s = {**self.stats, "batch_sizes": dict(sorted(self.stats["batch_sizes"].items()))}
            s["queued_images"] = self._admitted
        s["mean_batch"] = s["images"] / s["batches"] if s["batches"] else 0.0
        s.update(window_ms=self.window_s * 1e3, max_batch=self.max_batch, max_queue=self.max_queue)
        return s


