"""The StyleGAN2 objective as short pure functions, and the phase runner that applies them.

Notation follows Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (2020):
non-saturating logistic loss (Goodfellow et al. 2014), R1 on reals (Mescheder et al. 2018, eq. 4),
and path-length regularization (StyleGAN2 eq. 4). The phase names Gmain/Greg/Dmain/Dreg and the
lazy-regularization scheme are the paper's Section 3.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

import ops

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log(sigmoid(D(G(z)))) per sample."""
    return F.softplus(-fake_logits)


def d_logistic_loss_fake(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigmoid(D(G(z)))) per sample."""
    return F.softplus(fake_logits)


def d_logistic_loss_real(real_logits: torch.Tensor) -> torch.Tensor:
    """-log(sigmoid(D(x))) per sample."""
    return F.softplus(-real_logits)


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """||∇_x D(x)||² per sample; `real_img` must require grad and `real_logits` depend on it."""
    (grads,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img], create_graph=True)
    return grads.square().sum(dim=[1, 2, 3])


def path_lengths(fake_img: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """||J_w^T y|| per sample with y ~ N(0, I)/sqrt(H·W) given as `noise` (StyleGAN2 eq. 4)."""
    (grads,) = torch.autograd.grad(outputs=[(fake_img * noise).sum()], inputs=[ws], create_graph=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()  # [N]: mean over the num_ws copies of w


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor) -> torch.Tensor:
    """(||J_w^T y|| - a)² with `a` the running mean of the lengths."""
    return (lengths - pl_mean).square()


class StatsSink(Protocol):
    def report(self, name: str, value: torch.Tensor) -> None: ...


class NoStats:
    """A stats sink that drops everything (a loss used outside a training run)."""

    def report(self, name: str, value: torch.Tensor) -> None:
        pass


class StyleGAN2Loss:
    """Runs one training phase and accumulates its gradients; its only state is the path-length mean.

    `run_G` applies style mixing; `run_D` passes images through the augmentation pipeline (ADA) before D,
    reals and fakes alike, as the paper requires. Distribution is the training loop's business: it
    all-reduces the gradients this leaves in `.grad`.
    """

    def __init__(
        self,
        G_mapping: Callable[..., torch.Tensor],
        G_synthesis: Callable[..., torch.Tensor],
        D: Callable[..., torch.Tensor],
        augment_pipe: Callable[[torch.Tensor], torch.Tensor] | None = None,
        style_mixing_prob: float = 0.9,   # probability of mixing two latents (paper: 0.9)
        r1_gamma: float = 10.0,           # R1 weight γ
        pl_batch_shrink: int = 2,         # path-length batch = batch // shrink, to save compute
        pl_decay: float = 0.01,           # EMA decay of the path-length mean a
        pl_weight: float = 2.0,           # path-length weight (0 = off)
        blur_init_sigma: float = 0.0,     # StyleGAN3-R: blur D's inputs with this sigma at the start ...
        blur_fade_kimg: float = 0.0,      # ... fading linearly to 0 over this many kimg
        stats: StatsSink | None = None,
        device: torch.device | str = "cpu",
        update_emas_explicitly: bool = False,  # StyleGAN3: G tracks w_avg/magnitude EMAs only when told to
    ) -> None:
        self.G_mapping, self.G_synthesis, self.D = G_mapping, G_synthesis, D
        self.augment_pipe = augment_pipe
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.pl_weight = pl_weight
        self.blur_init_sigma = blur_init_sigma
        self.blur_fade_kimg = blur_fade_kimg
        self.update_emas_explicitly = update_emas_explicitly
        self.stats: StatsSink = stats or NoStats()
        self.pl_mean = torch.zeros([], device=device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loss's own state between steps (per process): the path-length mean a."""
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.pl_mean.copy_(state["pl_mean"])

    def run_G(self, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        # StyleGAN2-ADA's mapping folds every training-mode batch into w_avg; StyleGAN3's networks track
        # their EMAs (w_avg, magnitude_ema) only in D's generator pass, where `update_emas` is True.
        emas = {"update_emas": update_emas} if self.update_emas_explicitly else {}
        ws = self.G_mapping(z, c, **emas)
        if self.style_mixing_prob > 0:
            # One cutoff for the whole batch, as in the paper's implementation: layers from `cutoff`
            # on take their styles from a second latent.
            cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, ws.shape[1])
            mix = torch.rand([], device=ws.device) < self.style_mixing_prob
            cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, ws.shape[1]))
            ws2 = self.G_mapping(torch.randn_like(z), c, **({} if emas else {"skip_w_avg_update": True}))
            layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
            ws = torch.where(layer < cutoff, ws, ws2)
        img = self.G_synthesis(ws, **emas)
        return img, ws

    def blur_sigma(self, cur_nimg: int) -> float:
        """StyleGAN3 Sec. 3.2 / official loss: D sees blurred images early on, the blur fading out linearly."""
        if self.blur_fade_kimg <= 0:
            return 0.0
        return max(1 - cur_nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma

    def run_D(self, img: torch.Tensor, c: torch.Tensor, blur_sigma: float = 0.0) -> torch.Tensor:
        blur_size = math.floor(blur_sigma * 3)
        if blur_size > 0:
            taps = torch.arange(-blur_size, blur_size + 1, device=img.device, dtype=torch.float32)
            f = taps.div(blur_sigma).square().neg().exp2()  # Gaussian in base 2, as the official loss writes it
            img = ops.filter2d(img, f / f.sum())
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def accumulate_gradients(
        self,
        phase: str,
        real_img: torch.Tensor,   # [NCHW] in [-1, 1]
        real_c: torch.Tensor,     # [NC]
        gen_z: torch.Tensor,      # [NZ]
        gen_c: torch.Tensor,      # [NC]
        gain: float,              # loss multiplier: the lazy-regularization interval for Greg/Dreg
        cur_nimg: int = 0,        # images shown so far (the StyleGAN3-R blur schedule)
    ) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0
        blur = self.blur_sigma(cur_nimg)

        if do_Gmain:
            gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c, blur)
            self.stats.report("Loss/scores/fake", gen_logits)
            self.stats.report("Loss/signs/fake", gen_logits.sign())
            loss = g_nonsaturating_loss(gen_logits)
            self.stats.report("Loss/G/loss", loss)
            loss.mean().mul(gain).backward()

        if do_Gpl:
            n = gen_z.shape[0] // self.pl_batch_shrink
            gen_img, gen_ws = self.run_G(gen_z[:n], gen_c[:n])
            noise = torch.randn_like(gen_img) / (gen_img.shape[2] * gen_img.shape[3]) ** 0.5
            lengths = path_lengths(gen_img, gen_ws, noise)
            pl_mean = self.pl_mean.lerp(lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            penalty = path_length_penalty(lengths, pl_mean)
            self.stats.report("Loss/pl_penalty", penalty)
            loss = penalty * self.pl_weight
            self.stats.report("Loss/G/reg", loss)
            # `gen_img[:, 0, 0, 0] * 0` ties the image to the loss, as the official loop does; the
            # gradient it adds is exactly zero.
            (gen_img[:, 0, 0, 0] * 0 + loss).mean().mul(gain).backward()

        loss_Dgen: torch.Tensor | float = 0.0
        if do_Dmain:
            with torch.no_grad():
                gen_img, _ = self.run_G(gen_z, gen_c, update_emas=True)
            gen_logits = self.run_D(gen_img, gen_c, blur)
            self.stats.report("Loss/scores/fake", gen_logits)
            self.stats.report("Loss/signs/fake", gen_logits.sign())
            loss_Dgen = d_logistic_loss_fake(gen_logits)
            loss_Dgen.mean().mul(gain).backward()

        if do_Dmain or do_Dr1:
            real = real_img.detach().requires_grad_(do_Dr1)
            real_logits = self.run_D(real, real_c, blur)
            self.stats.report("Loss/scores/real", real_logits)
            self.stats.report("Loss/signs/real", real_logits.sign())
            loss_Dreal: torch.Tensor | float = 0.0
            if do_Dmain:
                loss_Dreal = d_logistic_loss_real(real_logits)
                self.stats.report("Loss/D/loss", loss_Dgen + loss_Dreal)
            loss_Dr1: torch.Tensor | float = 0.0
            if do_Dr1:
                penalty = r1_penalty(real, real_logits)
                loss_Dr1 = penalty * (self.r1_gamma / 2)
                self.stats.report("Loss/r1_penalty", penalty)
                self.stats.report("Loss/D/reg", loss_Dr1)
            (real_logits * 0 + loss_Dreal + loss_Dr1).mean().mul(gain).backward()
