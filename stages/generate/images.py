"""`images`: seeds (or saved ws) -> PNGs, grids and per-class grids."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from stages.generate.config import GenerateError, ImagesConfig
from stages.generate.seeds import class_labels, parse_grid, parse_seeds, seeds_to_z


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerateError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    return device


def load_generator(network: str, device: torch.device) -> torch.nn.Module:
    """G_ema of a snapshot / pickle / URL (what the official scripts render), on `device`, eval mode."""
    from models import load_network

    nets = load_network(network)
    G = nets.get("G_ema") if nets.get("G_ema") is not None else nets.get("G")
    if not isinstance(G, torch.nn.Module):
        raise GenerateError(f"{network}: holds no generator (G_ema or G)")
    return G.to(device).eval().requires_grad_(False)


def images_to_uint8(img: torch.Tensor) -> np.ndarray:
    """[NCHW] float in [-1, 1] -> [NHWC] uint8, with the official rounding `x * 127.5 + 128`, clamped."""
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()


def to_pil(img: np.ndarray) -> PIL.Image.Image:
    """[HWC] uint8 -> PIL image; one channel is written as 8-bit grayscale ('L')."""
    if img.ndim == 3 and img.shape[2] == 1:
        return PIL.Image.fromarray(img[:, :, 0], "L")
    if img.ndim == 3 and img.shape[2] == 3:
        return PIL.Image.fromarray(img, "RGB")
    raise GenerateError(f"cannot write an image with shape {img.shape} (1 or 3 channels expected)")


def save_image(img: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(img).save(path)
    return path


def make_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[N, H, W, C] uint8 -> one [rows*H, cols*W, C] image, row-major; missing cells stay black."""
    n, h, w, c = images.shape
    if n > rows * cols:
        raise GenerateError(f"--grid {rows}x{cols} holds {rows * cols} images, got {n}")
    canvas = np.zeros([rows * cols, h, w, c], dtype=images.dtype)
    canvas[:n] = images
    return canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def render_seeds(
    G: torch.nn.Module,
    seeds: list[int],
    c: torch.Tensor,                   # [N, c_dim] labels, one per seed
    trunc: float = 1.0,
    trunc_cutoff: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 8,
) -> np.ndarray:                       # [NHWC] uint8
    device = next(G.parameters()).device
    z = seeds_to_z(seeds, G.z_dim)
    out = []
    for sl in _batches(len(seeds), batch_size):
        img = G(z[sl].to(device), c[sl].to(device), truncation_psi=trunc, truncation_cutoff=trunc_cutoff,
                noise_mode=noise_mode)
        out.append(images_to_uint8(img))
    return np.concatenate(out) if out else np.zeros([0, G.img_resolution, G.img_resolution, G.img_channels], np.uint8)


@torch.no_grad()
def render_ws(G: torch.nn.Module, ws: torch.Tensor, noise_mode: str = "const", batch_size: int = 8) -> np.ndarray:
    device = next(G.parameters()).device
    out = [images_to_uint8(G.synthesis(ws[sl].to(device), noise_mode=noise_mode))
           for sl in _batches(len(ws), batch_size)]
    return np.concatenate(out)


def load_projected_w(path: str | os.PathLike, G: torch.nn.Module) -> torch.Tensor:
    """ws from a projector output: .npz with key 'w', shape [N, num_ws, w_dim]."""
    try:
        with np.load(path) as data:
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


def generate_images(G: torch.nn.Module, cfg: ImagesConfig) -> list[Path]:
    """Render `cfg` with `G` into `cfg.outdir`; returns the written files.

    seeds -> seed%04d.png each (official names); --grid -> grid.png only; --all-classes -> a class grid
    classes.png (row k = class k, one column per seed); --projected-w -> proj%02d.png per w.
    """
    outdir = Path(cfg.outdir)
    common: dict[str, Any] = dict(trunc=cfg.trunc, trunc_cutoff=cfg.trunc_cutoff, noise_mode=cfg.noise_mode,
                                  batch_size=cfg.batch_size)
    if cfg.trunc_cutoff is not None and cfg.trunc_cutoff > G.num_ws:
        raise GenerateError(f"--trunc-cutoff {cfg.trunc_cutoff} exceeds the network's {G.num_ws} ws")

    if cfg.projected_w is not None:
        imgs = render_ws(G, load_projected_w(cfg.projected_w, G), cfg.noise_mode, cfg.batch_size)
        if cfg.grid is not None:
            return [save_image(make_grid(imgs, *parse_grid(cfg.grid)), outdir / "grid.png")]
        return [save_image(img, outdir / f"proj{i:02d}.png") for i, img in enumerate(imgs)]

    seeds = parse_seeds(cfg.seeds)
    if cfg.all_classes:
        if G.c_dim == 0:
            raise GenerateError("--all-classes needs a conditional network; this one is unconditional")
        if cfg.class_idx is not None:
            raise GenerateError("--all-classes and --class exclude each other")
        rows = []
        for k in range(G.c_dim):
            rows.append(render_seeds(G, seeds, class_labels(G.c_dim, k, len(seeds)), **common))
        grid = make_grid(np.concatenate(rows), G.c_dim, len(seeds))
        return [save_image(grid, outdir / "classes.png")]

    imgs = render_seeds(G, seeds, class_labels(G.c_dim, cfg.class_idx, len(seeds)), **common)
    if cfg.grid is not None:
        return [save_image(make_grid(imgs, *parse_grid(cfg.grid)), outdir / "grid.png")]
    return [save_image(img, outdir / f"seed{seed:04d}.png") for seed, img in zip(seeds, imgs)]
