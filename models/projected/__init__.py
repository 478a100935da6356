"""Projected GAN (Sauer et al., NeurIPS 2021) and its FastGAN / FastGAN-lite generators.

    G = FastGANGenerator(img_resolution=256, lite=False)     # G(z, c, noise_mode=...) like every generator here
    D = ProjectedDiscriminator(c_dim=0, img_resolution=256)  # D(img, c) -> [N, K] logits of four scales
    loss = ProjectedGANLoss(G.mapping, G.synthesis, D)       # accumulate_gradients(phase, ...) like StyleGAN2Loss
"""

from models.projected.diffaugment import PROJECTED_GAN_POLICY, diff_augment
from models.projected.discriminator import BackboneOptions, ProjectedDiscriminator
from models.projected.fastgan import FastGANGenerator, FastGANMapping, FastGANSynthesis
from models.projected.feature_network import ProjectedFeatureNetwork
from models.projected.loss import (
    ProjectedGANLoss,
    g_loss,
    hinge_d_loss,
    hinge_d_loss_fake,
    hinge_d_loss_real,
)

__all__ = [
    "PROJECTED_GAN_POLICY",
    "BackboneOptions",
    "FastGANGenerator",
    "FastGANMapping",
    "FastGANSynthesis",
    "ProjectedDiscriminator",
    "ProjectedFeatureNetwork",
    "ProjectedGANLoss",
    "diff_augment",
    "g_loss",
    "hinge_d_loss",
    "hinge_d_loss_fake",
    "hinge_d_loss_real",
]
