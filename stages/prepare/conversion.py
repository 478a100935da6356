"""The conversion engine of `prepare`: a bounded pool of decode/encode workers, one or two passes over
the source (a colour image after grayscale ones restarts the pass as RGB), the atomic destination and
the report. See `stages.prepare.cli` for what differs from the official `dataset_tool.py`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.common.dataset import geometry_problem
from stages.common.errors import one_line
from stages.common.fileio import write_json_atomic
from stages.prepare import image_ops
from stages.prepare.config import PrepareConfig
from stages.prepare.destination import archive_name, check_replaceable, open_destination
from stages.prepare.report import PrepareError, Report
from stages.prepare.sources import Source, Task, open_source

log = logging.getLogger("stages.prepare")


class _ColourFound(Exception):
    """A colour image arrived after grayscale ones were written: redo the pass as RGB."""


# ---------------------------------------------------------------------------------------------
# Worker side. The spec is installed once per process by the pool initializer.

_SPEC: image_ops.ImageSpec | None = None


def _init_worker(spec: image_ops.ImageSpec) -> None:
    global _SPEC
    _SPEC = spec
    # Our header check (spec.max_pixels) is the bomb guard; Pillow's own would fire mid-decode.
    image_ops.PIL.Image.MAX_IMAGE_PIXELS = None


def _work(task: Task) -> image_ops.ImageResult | tuple[str, str]:
    assert _SPEC is not None
    try:
        return image_ops.process(task.kind, task.payload, _SPEC)
    except image_ops.ImageSkip as skip:
        return (skip.reason, skip.detail)


def _work_chunk(chunk: list[Task]) -> list[image_ops.ImageResult | tuple[str, str]]:
    return [_work(task) for task in chunk]


def _chunks(tasks: Iterator[Task], size: int) -> Iterator[list[Task]]:
    chunk: list[Task] = []
    for task in tasks:
        chunk.append(task)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_map(
    tasks: Iterator[Task], spec: image_ops.ImageSpec, workers: int, chunk_size: int
) -> Iterator[tuple[Task, image_ops.ImageResult | tuple[str, str]]]:
    """Process tasks in worker processes, yielding results in input order with bounded memory.

    Pool.imap would do the ordering, but its feeder thread drains the whole input iterator and its
    result queue grows without limit when the writer falls behind. A window of at most
    ``2 * workers + 2`` in-flight chunks keeps both ends bounded, so peak memory is independent of
    the dataset size.
    """
    if workers <= 1:
        _init_worker(spec)
        for task in tasks:
            yield task, _work(task)
        return
    pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(spec,))
    try:
        window: collections.deque[tuple[list[Task], Any]] = collections.deque()
        chunks = _chunks(tasks, chunk_size)
        exhausted = False
        while True:
            while not exhausted and len(window) < 2 * workers + 2:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                else:
                    window.append((chunk, pool.apply_async(_work_chunk, (chunk,))))
            if not window:
                break
            chunk, pending = window.popleft()
            yield from zip(chunk, pending.get())
    finally:
        pool.terminate()
        pool.join()


# ---------------------------------------------------------------------------------------------
# The conversion


def _run_pass(config: PrepareConfig, source: Source, channels: int, report: Report, workers: int) -> dict[str, Any]:
    """One pass over the source into a fresh temporary destination; commits only on success."""
    from tqdm import tqdm

    spec = config.image_spec(channels)
    chunk_size = config.chunk_size or (256 if source.kind.startswith("cifar") else 8)
    total = source.total if config.max_images is None else min(source.total, config.max_images)
    labels = array("q")
    target: tuple[int, int] | None = None  # (width, height) of the dataset once known
    dataset_channels = channels or None
    written = 0
    seen = 0
    with open_destination(config.dest) as dest:
        bar = tqdm(total=total, unit="img", disable=None if config.progress else True, file=sys.stderr, desc="prepare")
        try:
            results = _ordered_map(source.tasks(report.issue), spec, workers, chunk_size)
            for task, result in results:
                seen += 1
                if isinstance(result, tuple):
                    report.issue(result[0], task.name, result[1], "skip")
                    continue
                size = (result.width, result.height)
                if target is None:
                    problem = geometry_problem(result.channels, result.height, result.width)
                    if problem is not None:
                        report.issue("bad_resolution", task.name, problem, "skip")
                        continue
                    target = size
                elif size != target:
                    report.issue(
                        "size_mismatch",
                        task.name,
                        f"{size[0]}x{size[1]} but the dataset is {target[0]}x{target[1]}; use --width/--height",
                        "skip",
                    )
                    continue
                png, notes = result.png, result.notes
                if dataset_channels is None:
                    dataset_channels = result.channels
                elif result.channels != dataset_channels:
                    if dataset_channels == 1:
                        raise _ColourFound(task.name)
                    png = image_ops.gray_png_to_rgb(png, config.compress_level)
                    notes = [*notes, "gray_to_rgb"]
                for note in notes:
                    report.issue(note, task.name, "", "fixed")
                report.images_fixed += bool(notes)
                dest.add(archive_name(written), png)
                if source.labelled:
                    assert task.label is not None
                    labels.append(task.label)
                written += 1
                bar.update(1)
                if config.max_images is not None and written >= config.max_images:
                    break
            if written == 0:
                reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.counts["skip"].items())) or "no inputs"
                raise PrepareError(f"no images written from {config.source} ({reasons}); see the report for names")
            entries = [[archive_name(i), int(lab)] for i, lab in enumerate(labels)] if source.labelled else None
            dest.add("dataset.json", json.dumps({"labels": entries}))
            dest.commit()
        finally:
            bar.close()
    assert target is not None and dataset_channels is not None
    return {
        "num_inputs_seen": seen,
        "num_written": written,
        "resolution": target[0],
        "channels": dataset_channels,
        "labelled": source.labelled,
        "num_classes": (max(labels) + 1) if len(labels) else 0,
    }


def report_path(dest: str) -> Path:
    """The report beside a dataset: it always describes the dataset that is there."""
    return Path(str(Path(dest)) + ".report.json")


def failed_report_path(dest: str) -> Path:
    """Where a failed run's report goes, so the report beside an earlier dataset keeps describing it."""
    return Path(str(Path(dest)) + ".report.failed.json")


def log_path(dest: str) -> Path:
    return Path(str(Path(dest)) + ".log")


def prepare_dataset(config: PrepareConfig) -> dict[str, Any]:
    """Convert `config.source` into `config.dest`; returns the summary also written to the report.

    Raises SourceError (unreadable source), PrepareError (nothing usable, --on-error fail),
    ConfigError, or OSError (disk full, read-only). The destination is untouched unless the whole
    conversion succeeds; `<dest>.log` is appended to, so earlier runs' logs are kept.
    """
    workers = config.workers or len(os.sched_getaffinity(0))
    check_replaceable(config.dest)
    Path(config.dest).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path(config.dest), mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.DEBUG)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "status": "failed",
        "error": None,
        "source": config.source,
        "dest": config.dest,
        "config": dataclasses.asdict(config),
        "workers": workers,
    }
    report = Report(config.on_error)
    try:
        log.info("prepare %s -> %s with %d workers", config.source, config.dest, workers)
        source = open_source(config.source)
        summary["source_kind"] = source.kind
        channels, restarts = config.channels, 0
        while True:
            try:
                result = _run_pass(config, source, channels, report, workers)
                break
            except _ColourFound as found:
                # Colour wins: a grayscale start cannot hold this image, so redo everything as RGB.
                log.info("colour image %s after grayscale ones: restarting as RGB", found)
                channels, restarts = 3, restarts + 1
                report = Report(config.on_error)
        summary.update(result, status="ok", restarts=restarts)
    except BaseException as exc:
        summary["error"] = one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        log.info("error: %s", summary["error"])  # the command prints it once; the log keeps it too
        raise
    finally:
        seconds = time.perf_counter() - started
        summary.update(report.as_dict())
        summary["seconds"] = round(seconds, 3)
        summary["images_per_second"] = round(summary.get("num_written", 0) / max(seconds, 1e-9), 2)
        where = report_path(config.dest) if summary["status"] == "ok" else failed_report_path(config.dest)
        try:
            write_json_atomic(where, summary)
        except OSError as exc:  # e.g. the disk that filled up: the original error matters more
            log.warning("could not write %s: %s", where, one_line(exc))
        log.info("%s: %s written, %s skipped %s, %s fixed %s, %.1f s", summary["status"],
                 summary.get("num_written", 0), summary["num_skipped"], summary["skipped"], summary["num_fixed"],
                 summary["fixed"], seconds)
        log.removeHandler(handler)
        handler.close()
        log.setLevel(previous_level)
    return summary
