"""`style-mixing`: the official style-mixing matrix (StyleGAN Fig. 3 style)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from stages.common.images import nhwc, save_png, tile, to_uint8
from stages.common.seeds import class_labels, parse_seeds, seeds_to_z
from stages.generate.config import GenerateError, StyleMixingConfig
from stages.generate.images import render_ws


@torch.no_grad()
def style_mixing(G: torch.nn.Module, cfg: StyleMixingConfig) -> list[Path]:
    """Write `{row}-{col}.png` for every mix, `{seed}-{seed}.png` for every source, and `grid.png`.

    A cell (row r, col c) renders the row seed's ws with the layers `styles` taken from the column
    seed's ws. The grid is (rows + 1) x (cols + 1) cells: black top-left corner, column sources along
    the top row, row sources down the left column, as the official style_mixing.py lays it out.
    """
    row_seeds = parse_seeds(cfg.rows, "rows")
    col_seeds = parse_seeds(cfg.cols, "cols")
    styles = parse_seeds(cfg.styles, "styles")
    if G.num_ws == 1:  # FastGAN: one w drives every layer, so there are no per-layer styles to swap
        print(f"note: style-mixing: {type(G).__name__} has one w for all layers (num_ws 1); nothing to mix, "
              "skipped", file=sys.stderr)
        return []
    bad = [s for s in styles if s >= G.num_ws]
    if bad:
        raise GenerateError(f"--styles {bad[0]} is out of range: the network has ws 0-{G.num_ws - 1}")
    device = next(G.parameters()).device

    # One w per distinct seed; truncation applies to every layer (official), or up to trunc_cutoff.
    all_seeds = list(dict.fromkeys(row_seeds + col_seeds))
    z = seeds_to_z(all_seeds, G.z_dim).to(device)
    c = class_labels(G.c_dim, cfg.class_idx, len(all_seeds), all_classes_hint=False).to(device)
    all_w = G.mapping(z, c, truncation_psi=cfg.trunc, truncation_cutoff=cfg.trunc_cutoff)  # [N, num_ws, W]
    w_of = dict(zip(all_seeds, all_w))
    src = dict(zip(all_seeds, render_ws(G, all_w, cfg.noise_mode, cfg.batch_size)))  # seed -> [HWC]

    mixed: dict[tuple[int, int], np.ndarray] = {}
    for r in row_seeds:
        ws = w_of[r].unsqueeze(0).repeat(len(col_seeds), 1, 1)  # [C, num_ws, W]
        for j, col in enumerate(col_seeds):
            ws[j, styles] = w_of[col][styles]
        # One column at a time keeps fused-modconv/batch effects identical to the official per-image loop.
        for j, col in enumerate(col_seeds):
            img = G.synthesis(ws[j : j + 1], noise_mode=cfg.noise_mode)
            mixed[(r, col)] = nhwc(to_uint8(img))[0]

    outdir = Path(cfg.outdir)
    written = [save_png(img, outdir / f"{s}-{s}.png") for s, img in src.items() if (s, s) not in mixed]
    written += [save_png(img, outdir / f"{r}-{col}.png") for (r, col), img in mixed.items()]

    blank = np.zeros_like(next(iter(src.values())))
    cells = [blank] + [src[col] for col in col_seeds]
    for r in row_seeds:
        cells += [src[r]] + [mixed[(r, col)] for col in col_seeds]
    grid = tile(np.stack(cells), len(row_seeds) + 1, len(col_seeds) + 1)
    written.append(save_png(grid, outdir / "grid.png"))
    return written
