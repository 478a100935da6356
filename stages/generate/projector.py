"""`project`: find the W-space latent that reproduces a target image (StyleGAN2 paper, Sec. 5).

The method and every constant are those of the official StyleGAN2-ADA `projector.py`: start at the
mean w (of `w_avg_samples` mapped z drawn with RandomState(123)), optimise one w (broadcast to all
layers) and the per-layer noise buffers with Adam against the LPIPS distance of VGG16 features,
with a cosine learning-rate ramp-down, a short linear ramp-up, a decaying Gaussian perturbation of
w (scaled by the spread of W), a multi-scale autocorrelation penalty keeping the noise maps noise,
and the noise maps renormalised to zero mean / unit variance after every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.common.seeds import class_labels
from stages.generate.config import GenerateError, ProjectConfig

LPIPS_SIZE = 256  # VGG16 was trained on 224x224: larger images are area-downsampled to 256 first


def load_target(path: str | Path, resolution: int, channels: int) -> np.ndarray:
    """Target image as [HWC] uint8: centre-cropped to a square and Lanczos-resized, as official."""
    try:
        with PIL.Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as exc:
        raise GenerateError(f"--target {path}: cannot read the image ({exc})") from exc
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    im = im.resize((resolution, resolution), PIL.Image.LANCZOS)
    arr = np.array(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _lpips_input(images: torch.Tensor) -> torch.Tensor:
    """[NCHW] in [0, 255] -> what the VGG16 detector expects: 3 channels, at most 256x256."""
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)  # the detector is an RGB network
    if images.shape[2] > LPIPS_SIZE:
        images = F.interpolate(images, size=(LPIPS_SIZE, LPIPS_SIZE), mode="area")
    return images


def noise_regularization(noise_bufs: list[torch.Tensor]) -> torch.Tensor:
    """Sum over noise maps and their 2x pyramids (down to 8x8) of squared shift-by-one autocorrelations."""
    reg = torch.zeros([], device=noise_bufs[0].device if noise_bufs else "cpu")
    for buf in noise_bufs:
        noise = buf[None, None, :, :]  # [11HW] for avg_pool2d
        while True:
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return reg


def learning_rate(t: float, cfg: ProjectConfig) -> float:
    """Official schedule at progress t in [0, 1): cosine ramp-down over the last part, linear ramp-up first."""
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown_length)
    ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
    ramp = ramp * min(1.0, t / cfg.lr_rampup_length)
    return cfg.initial_learning_rate * ramp


def project(
    G: torch.nn.Module,
    target: np.ndarray,                # [HWC] uint8 at G's resolution
    vgg16: Callable[..., torch.Tensor],
    cfg: ProjectConfig,
    progress: bool = True,
    on_step: Callable[[int, float, float], None] | None = None,  # (step, dist, loss), e.g. for metrics
) -> tuple[torch.Tensor, list[float]]:  # ws per step [num_steps, num_ws, W], distance per step
    if target.shape != (G.img_resolution, G.img_resolution, G.img_channels):
        raise GenerateError(f"target is {target.shape}, G renders {(G.img_resolution,) * 2 + (G.img_channels,)}")
    device = next(G.parameters()).device
    # A private copy: the noise buffers are optimised in place and must not leak into the caller's G.
    G = copy.deepcopy(G).eval().requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    # Mean and spread of W, from the official fixed sample (RandomState(123)).
    z = torch.from_numpy(np.random.RandomState(123).randn(cfg.w_avg_samples, G.z_dim)).to(device, torch.float32)
    c = class_labels(G.c_dim, cfg.class_idx, cfg.w_avg_samples, all_classes_hint=False).to(device)
    with torch.no_grad():
        w_samples = G.mapping(z, c)[:, :1, :].cpu().numpy().astype(np.float32)  # [N1W]
    w_avg = np.mean(w_samples, axis=0, keepdims=True)  # [11W]
    w_std = float((np.sum((w_samples - w_avg) ** 2) / cfg.w_avg_samples) ** 0.5)

    noise_bufs = [buf for name, buf in G.synthesis.named_buffers() if "noise_const" in name]

    target_t = torch.from_numpy(target).permute(2, 0, 1).unsqueeze(0).to(device, torch.float32)  # [1CHW] 0..255
    with torch.no_grad():
        target_features = vgg16(_lpips_input(target_t), resize_images=False, return_lpips=True)

    w_opt = torch.tensor(w_avg, dtype=torch.float32, device=device, requires_grad=True)  # [11W]
    w_out = torch.zeros([cfg.num_steps, G.w_dim], dtype=torch.float32, device=device)
    for buf in noise_bufs:
        buf.copy_(torch.randn(buf.shape, generator=gen, device=device))
        buf.requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt, *noise_bufs], betas=(0.9, 0.999), lr=cfg.initial_learning_rate)

    dists: list[float] = []
    bar = tqdm(range(cfg.num_steps), desc="project", unit="step", disable=not progress)
    for step in bar:
        t = step / cfg.num_steps
        w_noise_scale = w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp_length) ** 2
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(t, cfg)

        w_noise = torch.randn(w_opt.shape, generator=gen, device=device) * w_noise_scale
        ws = (w_opt + w_noise).repeat([1, G.num_ws, 1])  # [1, num_ws, W]
        synth = (G.synthesis(ws, noise_mode="const") + 1) * (255 / 2)  # [1CHW] 0..255
        synth_features = vgg16(_lpips_input(synth), resize_images=False, return_lpips=True)
        dist = (target_features - synth_features).square().sum()
        loss = dist + noise_regularization(noise_bufs) * cfg.regularize_noise_weight

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        w_out[step] = w_opt.detach()[0, 0]
        dists.append(float(dist.detach()))
        bar.set_postfix(dist=f"{dists[-1]:.4g}", loss=f"{float(loss.detach()):.4g}")
        if on_step is not None:
            on_step(step, dists[-1], float(loss.detach()))

        with torch.no_grad():  # keep the noise maps unit Gaussian-like, so they cannot absorb the image
            for buf in noise_bufs:
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()

    return w_out.unsqueeze(1).repeat([1, G.num_ws, 1]), dists


def synth_uint8(G: torch.nn.Module, ws: torch.Tensor) -> np.ndarray:
    """[1, num_ws, W] -> [HWC] uint8 with the projector's rounding ((x + 1) * 127.5, truncated), as official."""
    with torch.no_grad():
        img = (G.synthesis(ws, noise_mode="const") + 1) * (255 / 2)
    return img.permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8)[0].cpu().numpy()


def load_vgg16(cfg: ProjectConfig, device: torch.device) -> Any:
    """The official LPIPS VGG16 (TorchScript): --detector-dir, $SG2_DETECTOR_DIR, cache, then the URL."""
    try:
        from stages.metrics.detectors import load_detector
    except ImportError as exc:
        raise GenerateError(f"the VGG16 detector loader (stages.metrics.detectors) is unavailable: {exc}") from exc
    return load_detector("vgg16", detector_dir=cfg.detector_dir, url=cfg.detector_url, device=device)


def run_projection(
    G: torch.nn.Module,
    cfg: ProjectConfig,
    vgg16: Callable[..., torch.Tensor] | None = None,  # default: load_detector('vgg16', ...)
    progress: bool = True,
) -> tuple[list[Path], dict[str, float]]:
    """Project `cfg.target`; writes target.png, proj.png, projected_w.npz (and proj.mp4). Returns files, metrics."""
    from stages.common.images import save_png

    if not cfg.target:
        raise GenerateError("--target is required: the image to project")
    target = load_target(cfg.target, G.img_resolution, G.img_channels)
    device = next(G.parameters()).device
    if vgg16 is None:
        vgg16 = load_vgg16(cfg, device)
    ws_steps, dists = project(G, target, vgg16, cfg, progress=progress)

    outdir = Path(cfg.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if cfg.save_video:
        import imageio

        path = outdir / "proj.mp4"
        with imageio.get_writer(str(path), mode="I", fps=10, codec="libx264", bitrate="16M") as video:
            for w in tqdm(ws_steps, desc="proj.mp4", unit="frame", disable=not progress):
                frame = np.concatenate([target, synth_uint8(G, w.unsqueeze(0))], axis=1)
                video.append_data(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)
        written.append(path)
    # Rendered with the caller's G and its own noise_const (as official), i.e. the network that
    # `images --projected-w` will use; the optimised noise maps were only a means to fit w.
    written.append(save_png(target, outdir / "target.png"))
    final = ws_steps[-1:]  # [1, num_ws, W]
    written.append(save_png(synth_uint8(G, final), outdir / "proj.png"))
    np.savez(outdir / "projected_w.npz", w=final.cpu().numpy())
    written.append(outdir / "projected_w.npz")
    return written, {"initial_dist": dists[0], "final_dist": dists[-1]}
