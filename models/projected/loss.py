"""Projected GAN's objective as short pure functions, and the phase runner that applies them.

Sauer et al., "Projected GANs Converge Faster" (NeurIPS 2021), Section 3: every scale's D_l judges P_l(x),
the feature map of projection l. The official implementation uses the hinge loss (Lim & Ye 2017, "Geometric
GAN"; Miyato et al. 2018, "Spectral Normalization") averaged over all logits of all scales:
    L_D = E_x[relu(1 - D(x))] + E_z[relu(1 + D(G(z)))],    L_G = -E_z[D(G(z))].
No R1, no path-length regularization and no ADA: DiffAugment inside D's forward does the augmenting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.loss import PHASES, NoStats, StatsSink


def hinge_d_loss_real(real_logits: torch.Tensor) -> torch.Tensor:
    """relu(1 - D(x)) averaged over each sample's logits: [N, ...] -> [N]."""
    return F.relu(1 - real_logits).flatten(1).mean(dim=1)


def hinge_d_loss_fake(fake_logits: torch.Tensor) -> torch.Tensor:
    """relu(1 + D(G(z))) averaged over each sample's logits: [N, ...] -> [N]."""
    return F.relu(1 + fake_logits).flatten(1).mean(dim=1)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], a scalar."""
    return hinge_d_loss_real(real_logits).mean() + hinge_d_loss_fake(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))], a scalar (the hinge GAN's generator loss)."""
    return -fake_logits.mean()


class ProjectedGANLoss:
    """Runs one training phase and accumulates its gradients, with StyleGAN2Loss's interface.

    Greg and Dreg do nothing (no regularization); Gboth and Dboth are Gmain and Dmain. The hinge loss keeps
    no state between steps (`state_dict` is empty).
    Distribution is the training loop's business: it all-reduces the gradients this leaves in `.grad`.
    """

    def __init__(
        self,
        G_mapping: Callable[..., torch.Tensor],
        G_synthesis: Callable[..., torch.Tensor],
        D: Callable[..., torch.Tensor],
        stats: StatsSink | None = None,
        synthesis_takes_c: bool = True,   # FastGAN's synthesis embeds c itself; False for StyleGAN2's
    ) -> None:
        self.G_mapping, self.G_synthesis, self.D = G_mapping, G_synthesis, D
        self.synthesis_takes_c = synthesis_takes_c
        self.stats: StatsSink = stats or NoStats()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"Projected GAN's loss has no state; got {sorted(state)}")

    def run_G(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ws = self.G_mapping(z, c)
        return self.G_synthesis(ws, c) if self.synthesis_takes_c else self.G_synthesis(ws)

    def accumulate_gradients(
        self,
        phase: str,
        real_img: torch.Tensor,   # [NCHW] in [-1, 1]
        real_c: torch.Tensor,     # [NC]
        gen_z: torch.Tensor,      # [NZ]
        gen_c: torch.Tensor,      # [NC]
        gain: float,              # loss multiplier (1 for the main phases)
        cur_nimg: int = 0,        # images shown so far (StyleGAN2Loss's schedules use it; nothing here does)
    ) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")

        if phase in ("Gmain", "Gboth"):
            gen_logits = self.D(self.run_G(gen_z, gen_c), gen_c)
            self.stats.report("Loss/scores/fake", gen_logits)
            self.stats.report("Loss/signs/fake", gen_logits.sign())
            loss = -gen_logits.flatten(1).mean(dim=1)  # [N]; its mean is g_loss(gen_logits)
            self.stats.report("Loss/G/loss", loss)
            loss.mean().mul(gain).backward()

        if phase in ("Dmain", "Dboth"):
            # Fakes and reals go through D separately, each backward right after its forward, as official:
            # only one D graph is alive at a time.
            with torch.no_grad():
                gen_img = self.run_G(gen_z, gen_c)
            gen_logits = self.D(gen_img, gen_c)
            self.stats.report("Loss/scores/fake", gen_logits)
            self.stats.report("Loss/signs/fake", gen_logits.sign())
            loss_fake = hinge_d_loss_fake(gen_logits)
            loss_fake.mean().mul(gain).backward()

            real_logits = self.D(real_img.detach(), real_c)
            self.stats.report("Loss/scores/real", real_logits)
            self.stats.report("Loss/signs/real", real_logits.sign())
            loss_real = hinge_d_loss_real(real_logits)
            self.stats.report("Loss/D/loss", loss_fake.detach() + loss_real.detach())
            loss_real.mean().mul(gain).backward()
