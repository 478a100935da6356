"""StyleGAN2-ADA networks and their serialization.

`import models` gives the networks (official constructor arguments and state_dict names) and
`load_network`, which reads this project's code-free snapshots, official network pickles (without
executing code stored in them) and URLs.
"""

from models.augment import AUGPIPE_SPECS, AugmentParams, AugmentPipe, make_augment_pipe
from models.discriminator import Discriminator
from models.generator import Generator
from models.legacy import UnsafePickleError, UnsupportedPickleError
from models.loading import load_network, save_network
from models.mapping import MappingNetwork
from models.snapshot import SnapshotError, StateMismatchError, load_snapshot, save_snapshot
from models.synthesis import SynthesisNetwork

__all__ = [
    "AUGPIPE_SPECS",
    "AugmentParams",
    "AugmentPipe",
    "Discriminator",
    "Generator",
    "MappingNetwork",
    "SnapshotError",
    "StateMismatchError",
    "SynthesisNetwork",
    "UnsafePickleError",
    "UnsupportedPickleError",
    "load_network",
    "load_snapshot",
    "make_augment_pipe",
    "save_network",
    "save_snapshot",
]
