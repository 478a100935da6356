"""What a run says while it trains: `log.txt` + console on the main process, one status line per tick
(official layout, plus the ETA), and SIGTERM/SIGINT turned into a graceful stop at the next step."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stages.common.progress import format_time


class RunLog:
    """Console + `log.txt` on the main process; silent elsewhere."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, msg: str = "") -> None:
        if self.path is None:
            return
        print(msg, flush=True)
        with self.path.open("a") as fh:
            fh.write(msg + "\n")


def tick_line(tick: int, cur_nimg: int, total_nimg: int, info: dict[str, float]) -> str:
    """`tick 3  kimg 12.000/25000  time 4m 10s  sec/tick ...  eta 2d 03h 10m ...` from the tick statistics."""
    sec_per_kimg = info["Timing/sec_per_kimg"]
    eta = format_time(max(total_nimg - cur_nimg, 0) / 1000 * sec_per_kimg)
    elapsed = format_time(info["Timing/total_sec"])
    return (f"tick {tick:<5d} kimg {cur_nimg / 1e3:.3f}/{total_nimg / 1e3:g}  time {elapsed}"
            f"  sec/tick {info['Timing/sec_per_tick']:.1f}  sec/kimg {sec_per_kimg:.2f}  eta {eta}"
            f"  maintenance {info['Timing/maintenance_sec']:.1f}  cpumem {info['Resources/cpu_mem_gb']:.2f}"
            f"  gpumem {info['Resources/peak_gpu_mem_gb']:.2f}  augment {info['Progress/augment']:.3f}")


class StopFlag:
    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGTERM/SIGINT set a flag that the loop checks between steps; a second SIGINT interrupts at once."""
    flag = StopFlag()
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum

    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
