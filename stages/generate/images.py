"""`images`: seeds (or saved ws) -> PNGs, grids and per-class grids. Images are written batch by batch,
so a long seed list costs time, not memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common.images import nhwc, save_png, tile, to_uint8
from stages.common.seeds import class_labels, parse_grid, parse_seeds, seeds_to_z
from stages.generate.config import GenerateError, ImagesConfig, parse_vec2


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def iter_seed_images(
    G: torch.nn.Module,
    seeds: list[int],
    c: torch.Tensor,                   # [N, c_dim] labels, one per seed
    trunc: float = 1.0,
    trunc_cutoff: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 8,
) -> Iterator[np.ndarray]:             # [NHWC] uint8 per batch
    device = next(G.parameters()).device
    for sl in _batches(len(seeds), batch_size):
        z = seeds_to_z(seeds[sl], G.z_dim).to(device)
        img = G(z, c[sl].to(device), truncation_psi=trunc, truncation_cutoff=trunc_cutoff, noise_mode=noise_mode)
        yield nhwc(to_uint8(img))


def render_seeds(G: torch.nn.Module, seeds: list[int], c: torch.Tensor, **kwargs: Any) -> np.ndarray:
    """[N, H, W, C] uint8 for the seeds (all in memory: grids only)."""
    parts = list(iter_seed_images(G, seeds, c, **kwargs))
    return np.concatenate(parts) if parts else np.zeros([0, G.img_resolution, G.img_resolution, G.img_channels],
                                                        np.uint8)


@torch.no_grad()
def render_ws(G: torch.nn.Module, ws: torch.Tensor, noise_mode: str = "const", batch_size: int = 8) -> np.ndarray:
    device = next(G.parameters()).device
    return np.concatenate([nhwc(to_uint8(G.synthesis(ws[sl].to(device), noise_mode=noise_mode)))
                           for sl in _batches(len(ws), batch_size)])


def load_projected_w(path: str | os.PathLike, G: torch.nn.Module) -> torch.Tensor:
    """ws from a projector output: .npz with key 'w', shape [N, num_ws, w_dim]."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "w" not in data:
                raise GenerateError(f"--projected-w {path}: no array 'w' in the file (keys: {sorted(data.files)})")
            w = np.asarray(data["w"])
    except (OSError, ValueError) as exc:
        raise GenerateError(f"--projected-w {path}: cannot read ({exc})") from exc
    if w.ndim != 3 or w.shape[1:] != (G.num_ws, G.w_dim):
        raise GenerateError(
            f"--projected-w {path}: 'w' has shape {list(w.shape)}, this network needs [N, {G.num_ws}, {G.w_dim}]"
        )
    return torch.from_numpy(w).to(torch.float32)


def make_transform(translate: tuple[float, float], angle: float) -> np.ndarray:
    """[3, 3] float64 image transform of the official gen_images.py: rotate by `angle` degrees, then move by
    `translate` image sizes (x right, y down)."""
    s, c = np.sin(np.radians(angle)), np.cos(np.radians(angle))
    return np.array([[c, s, translate[0]], [-s, c, translate[1]], [0.0, 0.0, 1.0]])


def set_user_transform(G: torch.nn.Module, cfg: ImagesConfig) -> None:
    """StyleGAN3: `G.synthesis.input.transform` = inverse of the --translate/--rotate matrix (identity when
    neither is given, as gen_images.py sets it for every image). The generator stores the inverse so that
    it never inverts a matrix itself. A network without the buffer (StyleGAN2) refuses the flags."""
    transform = getattr(getattr(getattr(G, "synthesis", None), "input", None), "transform", None)
    if not isinstance(transform, torch.Tensor):
        if cfg.transformed:
            raise GenerateError(f"--translate/--rotate need a StyleGAN3 network (G.synthesis.input.transform); "
                                f"this one is a {type(G).__name__} without it")
        return
    translate = parse_vec2(cfg.translate, "translate") if cfg.translate is not None else (0.0, 0.0)
    m = np.linalg.inv(make_transform(translate, cfg.rotate or 0.0))
    with torch.no_grad():
        transform.copy_(torch.from_numpy(m))


def wants_class_grid(cfg: ImagesConfig, c_dim: int) -> bool:
    """`all_classes` as given, or by default: a conditional network rendered without --class."""
    if cfg.all_classes is None:
        return c_dim > 0 and cfg.class_idx is None
    if cfg.all_classes and c_dim == 0:
        raise GenerateError("--all-classes needs a conditional network; this one is unconditional")
    if cfg.all_classes and cfg.class_idx is not None:
        raise GenerateError("--all-classes and --class exclude each other (use --no-all-classes with --class)")
    return cfg.all_classes


def generate_images(G: torch.nn.Module, cfg: ImagesConfig) -> list[Path]:
    """Render `cfg` with `G` into `cfg.outdir`; returns the written files.

    seeds -> seed%04d.png each (official names); --grid -> grid.png only; a conditional network without
    --class (or --all-classes) -> classes.png (row k = class k, one column per seed); --projected-w ->
    proj%02d.png per w. A StyleGAN3 network renders under --translate/--rotate (its transform buffer is set).
    """
    set_user_transform(G, cfg)
    outdir = Path(cfg.outdir)
    common: dict[str, Any] = dict(trunc=cfg.trunc, trunc_cutoff=cfg.trunc_cutoff, noise_mode=cfg.noise_mode,
                                  batch_size=cfg.batch_size)
    if cfg.trunc_cutoff is not None and cfg.trunc_cutoff > G.num_ws:
        raise GenerateError(f"--trunc-cutoff {cfg.trunc_cutoff} exceeds the network's {G.num_ws} ws")
    grid = parse_grid(cfg.grid) if cfg.grid is not None else None

    if cfg.projected_w is not None:
        imgs = render_ws(G, load_projected_w(cfg.projected_w, G), cfg.noise_mode, cfg.batch_size)
        if grid is not None:
            return [save_png(tile(imgs, grid[1], grid[0]), outdir / "grid.png")]
        return [save_png(img, outdir / f"proj{i:02d}.png") for i, img in enumerate(imgs)]

    seeds = parse_seeds(cfg.seeds)
    if wants_class_grid(cfg, G.c_dim):
        if len(seeds) * G.c_dim > 10_000:
            raise GenerateError(f"classes.png would hold {len(seeds) * G.c_dim:,} images; use fewer --seeds")
        rows = [render_seeds(G, seeds, class_labels(G.c_dim, k, len(seeds)), **common) for k in range(G.c_dim)]
        return [save_png(tile(np.concatenate(rows), G.c_dim, len(seeds)), outdir / "classes.png")]

    c = class_labels(G.c_dim, cfg.class_idx, len(seeds))
    if grid is not None:
        cols, rows = grid
        if len(seeds) > cols * rows:
            raise GenerateError(f"--grid {cfg.grid} holds {cols * rows} images, got {len(seeds)} seeds")
        return [save_png(tile(render_seeds(G, seeds, c, **common), rows, cols), outdir / "grid.png")]
    written: list[Path] = []
    batches = iter_seed_images(G, seeds, c, **common)
    for batch_seeds, imgs in zip((seeds[sl] for sl in _batches(len(seeds), cfg.batch_size)), batches):
        written += [save_png(img, outdir / f"seed{seed:04d}.png") for seed, img in zip(batch_seeds, imgs)]
    return written
