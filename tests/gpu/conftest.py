"""Tests marked `gpu` need a CUDA device: without one they are skipped with the reason "no CUDA", so `make test`
collects them and reports skips, never failures. `make gpu-check` (tests/gpu/gpu_check.py) runs them on a GPU."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
