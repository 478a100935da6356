"""`video`: latent interpolation through keyframe seeds, a grid of interpolations per frame.

Each grid cell walks through its own keyframes (K = len(seeds) / (rows * cols) of them, taken from
the seed list cell by cell) in W space. `--loop` makes the path periodic by interpolating over the
keyframes repeated on both sides (a wraparound grid): the spline then leaves the last keyframe with
the slope it arrives at the first one with, so the video loops without a visible seam.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import scipy.interpolate
import torch
from tqdm import tqdm

from stages.common.images import nhwc, tile, to_uint8
from stages.common.seeds import class_labels, parse_grid, parse_seeds, seeds_to_z
from stages.generate.config import GenerateError, VideoConfig


def num_frames(num_keyframes: int, w_frames: int, loop: bool) -> int:
    """Frames in the video: a loop ends one step before returning to keyframe 0; a path ends on its last one."""
    return num_keyframes * w_frames if loop else (num_keyframes - 1) * w_frames + 1


def make_interpolator(
    keys: np.ndarray,   # [K, num_ws, W] keyframe ws of one cell
    kind: str,
    loop: bool,
) -> Callable[[float], np.ndarray]:
    """t in keyframe units (0..K) -> ws [num_ws, W]."""
    k = keys.shape[0]
    if loop:
        # Enough copies on each side that the spline near [0, K) no longer feels the ends.
        wraps = 2 if kind == "cubic" else 1
        x = np.arange(-k * wraps, k * (wraps + 1))
        y = np.tile(keys, [2 * wraps + 1, 1, 1])
    else:
        if k == 1:
            return lambda t: keys[0]
        if kind == "cubic" and k < 4:
            raise GenerateError(f"--kind cubic without --loop needs >= 4 keyframes per cell, got {k}; "
                                "use --kind linear, --loop, or more seeds")
        x, y = np.arange(k), keys
    f = scipy.interpolate.interp1d(x, y, kind=kind, axis=0)
    return lambda t: f(t)


class _Writer:
    """MP4 through imageio's ffmpeg plugin (the imageio-ffmpeg binary), GIF through Pillow."""

    def __init__(self, path: Path, fps: int, bitrate: str) -> None:
        self.path = path
        self.fps = fps
        self.gif_frames: list[PIL.Image.Image] = []
        self.mp4 = None
        if path.suffix.lower() == ".mp4":
            import imageio

            self.mp4 = imageio.get_writer(str(path), mode="I", fps=fps, codec="libx264", bitrate=bitrate)

    def append(self, frame: np.ndarray) -> None:  # [HWC] uint8
        if self.mp4 is not None:
            # H.264 in yuv420p has no grayscale mode; replicate the channel.
            self.mp4.append_data(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)
        else:
            self.gif_frames.append(PIL.Image.fromarray(frame[:, :, 0] if frame.shape[2] == 1 else frame))

    def close(self) -> None:
        if self.mp4 is not None:
            self.mp4.close()
        elif self.gif_frames:
            # GIF delays are in 10 ms units; Pillow merges identical consecutive frames (keeping the time).
            first, *rest = self.gif_frames
            first.save(self.path, save_all=True, append_images=rest, duration=round(1000 / self.fps), loop=0)


@torch.no_grad()
def render_video(G: torch.nn.Module, cfg: VideoConfig, progress: bool = True) -> list[Path]:
    """Write the interpolation video to `cfg.output`; returns [path]."""
    seeds = parse_seeds(cfg.seeds)
    cols, rows = parse_grid(cfg.grid)  # official W x H
    cells = rows * cols
    if len(seeds) % cells != 0:
        raise GenerateError(f"--seeds: {len(seeds)} seeds do not fill a {cols}x{rows} grid evenly "
                            f"(need a multiple of {cells})")
    k = len(seeds) // cells
    device = next(G.parameters()).device

    z = seeds_to_z(seeds, G.z_dim).to(device)
    c = class_labels(G.c_dim, cfg.class_idx, len(seeds), all_classes_hint=False).to(device)
    ws = G.mapping(z, c, truncation_psi=cfg.trunc, truncation_cutoff=cfg.trunc_cutoff)  # [cells*K, num_ws, W]
    ws = ws.cpu().numpy().reshape(cells, k, G.num_ws, G.w_dim)
    interps = [make_interpolator(ws[i], cfg.kind, cfg.loop) for i in range(cells)]

    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, cfg.fps, cfg.bitrate)
    total = num_frames(k, cfg.w_frames, cfg.loop)
    try:
        for frame_idx in tqdm(range(total), desc=f"video {out.name}", unit="frame", disable=not progress):
            t = frame_idx / cfg.w_frames
            w = torch.from_numpy(np.stack([f(t) for f in interps])).to(device=device, dtype=torch.float32)
            imgs = [nhwc(to_uint8(G.synthesis(w[s : s + cfg.batch_size], noise_mode=cfg.noise_mode)))
                    for s in range(0, cells, cfg.batch_size)]
            writer.append(tile(np.concatenate(imgs), rows, cols))
    finally:
        writer.close()
    return [out]
