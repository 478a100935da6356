"""Seed lists, grid shapes, the official seed -> z rule, and class labels (generate, export render)."""

from __future__ import annotations

import re

import numpy as np
import torch

from stages.common.errors import BadInput

_RANGE = re.compile(r"^(\d+)-(\d+)$")
_MAX_SEED = 2**32 - 1  # np.random.RandomState accepts seeds in [0, 2**32)
MAX_SEEDS = 100_000   # per command: ~1 day of 256 px images on a CPU; a longer list is almost surely a typo


def parse_seeds(spec: str | int | list[int] | tuple[int, ...], what: str = "seeds") -> list[int]:
    """'0-35,40' -> [0, 1, ..., 35, 40]. Ranges are inclusive, as in the official `num_range`.

    The official parser takes either one range or one comma list; a mix of both is accepted here
    because it is unambiguous. Order and duplicates are kept (they decide the file/grid order).
    """
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, (list, tuple)):
        items = [int(s) for s in spec]
    else:
        text = str(spec).replace(" ", "")
        if not text:
            raise BadInput(f"--{what}: empty list (expected e.g. 0-35,40)")
        items = _expand(text, what)
    if len(items) > MAX_SEEDS:
        raise BadInput(f"--{what}: more than {MAX_SEEDS:,} seeds in one command; split the list into several commands")
    for s in items:
        if not 0 <= s <= _MAX_SEED:
            raise BadInput(f"--{what}: {s} is outside [0, {_MAX_SEED}]")
    return items


def _expand(text: str, what: str) -> list[int]:
    items: list[int] = []
    for part in text.split(","):
        m = _RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise BadInput(f"--{what}: range {part!r} runs backwards")
            if len(items) + hi - lo + 1 > MAX_SEEDS:
                raise BadInput(f"--{what}: more than {MAX_SEEDS:,} seeds in one command; split the list "
                               "into several commands")
            items.extend(range(lo, hi + 1))
        elif part.isdigit():
            items.append(int(part))
        else:
            raise BadInput(f"--{what}: cannot parse {part!r} in {text!r} (expected e.g. 0-35,40)")
    return items


def parse_grid(spec: str, what: str = "grid") -> tuple[int, int]:
    """'WxH' -> (columns, rows), both >= 1: width first, as the official tools read it (`--grid=4x2` is
    four images across, two down)."""
    m = re.fullmatch(r"(\d+)[xX](\d+)", str(spec).strip())
    if not m or not 1 <= int(m.group(1)) <= 1024 or not 1 <= int(m.group(2)) <= 1024:
        raise BadInput(f"--{what}: expected COLSxROWS with numbers in 1..1024, e.g. 4x2, got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def seeds_to_z(seeds: list[int], z_dim: int) -> torch.Tensor:
    """The official rule: z for `seed` is `np.random.RandomState(seed).randn(1, z_dim)` (float64 -> float32).

    Stacking per-seed draws (rather than one batch draw) keeps an image tied to its seed whatever the
    batch, which is what makes seed lists shareable between users and scripts.
    """
    z = np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in seeds]) if seeds else np.zeros([0, z_dim])
    return torch.from_numpy(z).to(torch.float32)  # [N, z_dim]


def class_labels(c_dim: int, class_idx: int | None, n: int, all_classes_hint: bool = True) -> torch.Tensor:
    """One-hot labels [n, c_dim] for `class_idx`; checks that conditional/unconditional use matches.

    An unconditional network ignores the label (shape [n, 0]); a `class_idx` given to one is an error
    rather than the official warning, because silently ignoring it gives a user the wrong images.
    """
    if c_dim == 0:
        if class_idx is not None:
            raise BadInput(f"--class {class_idx}: the network is unconditional (c_dim=0); drop --class")
        return torch.zeros([n, 0])
    if class_idx is None:
        extra = " or --all-classes" if all_classes_hint else ""
        raise BadInput(
            f"the network is conditional with {c_dim} classes (0-{c_dim - 1}); pass --class K{extra}"
        )
    if not 0 <= class_idx < c_dim:
        raise BadInput(f"--class {class_idx} is out of range: the network has classes 0-{c_dim - 1}")
    c = torch.zeros([n, c_dim])
    c[:, class_idx] = 1
    return c
