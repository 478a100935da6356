"""Image grids of reals and fakes (official layout: rows grouped by label for conditional data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.common.images import nhwc, save_png, tile, to_uint8


def grid_layout(resolution: int, grid_w: int = 0, grid_h: int = 0) -> tuple[int, int]:
    """Official default: fill a 7680x4320 canvas, 7..32 columns and 4..32 rows."""
    gw = grid_w or int(np.clip(7680 // resolution, 7, 32))
    gh = grid_h or int(np.clip(4320 // resolution, 4, 32))
    return gw, gh


def grid_indices(dataset, gw: int, gh: int, seed: int = 0) -> list[int]:
    """Dataset indices for the grid: a random subset, or for labelled data one label per row, cycling."""
    rnd = np.random.RandomState(seed)
    n = len(dataset)
    if not dataset.has_labels:
        order = list(range(n))
        rnd.shuffle(order)
        return [order[i % n] for i in range(gw * gh)]
    groups: dict[tuple[float, ...], list[int]] = {}
    for idx in range(n):
        groups.setdefault(tuple(dataset.get_label(idx).flat[::-1]), []).append(idx)
    labels = sorted(groups)
    for key in labels:
        rnd.shuffle(groups[key])
    out: list[int] = []
    for y in range(gh):
        key = labels[y % len(labels)]
        members = groups[key]
        out += [members[x % len(members)] for x in range(gw)]
        groups[key] = members[gw % len(members):] + members[:gw % len(members)]  # next row of this label
    return out


def save_grid(images: np.ndarray | torch.Tensor, path: str | Path, drange: tuple[float, float],
              grid: tuple[int, int]) -> None:
    """Tile `[N, C, H, W]` images (N = columns * rows, row-major) into one PNG, mapping `drange` to 0..255."""
    gw, gh = grid
    save_png(tile(nhwc(to_uint8(torch.as_tensor(images), drange)), gh, gw), path)
