"""Perceptual path length: LPIPS distance between images a small step ε apart on a latent path, / ε².

Protocol of the official `ppl_*` metrics (Karras et al. 2019, sec. 3.2): endpoints z0, z1 ~ N(0, I);
t ~ U(0, 1) ('full') or t = 0 ('end'); slerp in Z (z lies near a sphere), lerp in W; fresh random noise
buffers per batch but the same noise for both images of a pair (noise_mode='const'); optional central
crop (rows 3/8..7/8, columns 2/8..6/8 - the face region of FFHQ); box-downsampled to 256 px; VGG16 LPIPS
features; mean after rejecting the lowest and highest 1 % of distances.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from stages.metrics.distributed import ProcessGroup, SingleProcess, gather_rows, is_main, my_batches
from stages.metrics.features import _progress, batch_latents, seeded_torch
from stages.metrics.formulas import ppl_from_distances, slerp

# The official code never upsamples; VGG16's five pooling stages need >= 32 px, so smaller (cropped)
# images are enlarged by nearest-neighbour replication - a choice of ours that only affects tiny generators.
MIN_LPIPS_SIZE = 32


def _lpips_input(img: torch.Tensor, img_resolution: int, crop: bool) -> torch.Tensor:
    """[-1, 1] NCHW -> [0, 255] float NCHW, cropped and sized for the VGG16 LPIPS detector."""
    if crop:
        c = img.shape[2] // 8
        img = img[:, :, c * 3:c * 7, c * 2:c * 6]
    factor = img_resolution // 256
    if factor > 1:  # box filter, as official
        img = img.reshape([-1, img.shape[1], img.shape[2] // factor, factor, img.shape[3] // factor, factor])
        img = img.mean([3, 5])
    small = min(img.shape[2], img.shape[3])
    if small < MIN_LPIPS_SIZE:
        up = -(-MIN_LPIPS_SIZE // small)
        img = img.repeat_interleave(up, dim=2).repeat_interleave(up, dim=3)
    img = (img + 1) * (255 / 2)
    return img.repeat([1, 3, 1, 1]) if img.shape[1] == 1 else img


def ppl_distances(
    G: torch.nn.Module,
    vgg16: Any,                            # LPIPS detector: vgg16(img, resize_images=False, return_lpips=True)
    labels: np.ndarray | None,
    num_samples: int,
    space: str = "w",
    sampling: str = "end",
    crop: bool = True,
    epsilon: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    group: ProcessGroup | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """[num_samples] scaled squared LPIPS distances (in global sample order on every process)."""
    if space not in ("z", "w") or sampling not in ("full", "end"):
        raise ValueError(f"space must be z|w and sampling full|end, got {space!r}, {sampling!r}")
    if crop and G.img_resolution % 8:
        raise ValueError("the PPL crop needs a resolution divisible by 8")
    group = group or SingleProcess()
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)  # noise buffers are overwritten below
    noise_bufs = [buf for name, buf in G.named_buffers() if name.endswith(".noise_const")]
    parts = []
    with _progress(num_samples, "ppl sampling", progress and is_main(group)) as bar:
        for b, s, e in my_batches(num_samples, batch_size, group):
            n = e - s
            z, c, _ = batch_latents(seed, b, 2 * n, G.z_dim, labels)
            z0, z1 = torch.from_numpy(z).to(device).chunk(2)
            c = torch.from_numpy(c[:n]).to(device)
            with torch.no_grad(), seeded_torch(seed, b, device):
                t = torch.rand([n], device=device) * (1 if sampling == "full" else 0)
                if space == "w":
                    w0, w1 = G.mapping(torch.cat([z0, z1]), torch.cat([c, c])).chunk(2)
                    tt = t[:, None, None]
                    wt0, wt1 = w0.lerp(w1, tt), w0.lerp(w1, tt + epsilon)
                else:
                    zt0, zt1 = slerp(z0, z1, t[:, None]), slerp(z0, z1, t[:, None] + epsilon)
                    wt0, wt1 = G.mapping(torch.cat([zt0, zt1]), torch.cat([c, c])).chunk(2)
                for buf in noise_bufs:
                    buf.copy_(torch.randn_like(buf))
                img = G.synthesis(torch.cat([wt0, wt1]), noise_mode="const", force_fp32=True)
                lp0, lp1 = vgg16(_lpips_input(img, G.img_resolution, crop), resize_images=False,
                                 return_lpips=True).chunk(2)
                dist = (lp0 - lp1).square().sum(1) / epsilon**2
            parts.append((s, dist.double().cpu().numpy()))
            bar.update(n * group.num_processes)
    return gather_rows(parts, group)


def perceptual_path_length(*args: Any, **kwargs: Any) -> float:
    """PPL: `ppl_distances` reduced with the 1 %/99 % outlier rejection."""
    return ppl_from_distances(ppl_distances(*args, **kwargs))
