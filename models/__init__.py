"""GAN networks and their serialization, usable from a notebook with `import models`.

    G = models.load_generator("runs/demo")              # G_ema of the newest snapshot, eval mode
    img = G(z, c, truncation_psi=0.7, noise_mode="const")
    models.grid(img, nrow=8)                            # a PIL image (Jupyter shows it)
    with open("ffhq.pkl", "rb") as f:                   # the official legacy.load_network_pkl(f)
        G = models.load_network_pkl(f)["G_ema"]

CLIP (ranking samples by text) lives in `models.clip` and is imported only when asked for.

`load_network` reads this project's code-free snapshots, official network pickles (without executing
code stored in them) and URLs. The networks keep the official constructor arguments and state_dict
names. Nothing here knows about MLflow, DVC or Prefect.
"""

from models.augment import AUGPIPE_SPECS, AugmentParams, AugmentPipe, make_augment_pipe
from models.grid import grid
from models.serialization.loading import load_generator, load_network, load_network_pkl
from models.serialization.official_pickle import UnsafePickleError, UnsupportedPickleError
from models.serialization.snapshot import SnapshotError, StateMismatchError, load_snapshot, save_snapshot
from models.stylegan2.discriminator import Discriminator
from models.stylegan2.generator import Generator
from models.stylegan2.mapping import MappingNetwork
from models.stylegan2.synthesis import SynthesisNetwork
from models.stylegan3.generator import StyleGAN3Generator

__all__ = [
    "AUGPIPE_SPECS",
    "AugmentParams",
    "AugmentPipe",
    "Discriminator",
    "Generator",
    "MappingNetwork",
    "SnapshotError",
    "StateMismatchError",
    "StyleGAN3Generator",
    "SynthesisNetwork",
    "UnsafePickleError",
    "UnsupportedPickleError",
    "grid",
    "load_generator",
    "load_network",
    "load_network_pkl",
    "load_snapshot",
    "make_augment_pipe",
    "save_snapshot",
]
