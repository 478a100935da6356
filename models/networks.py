"""One import for every network class: `from models.networks import Generator, Discriminator, ...`.

The classes live in small modules (layers, mapping, synthesis, generator, discriminator); this hub
mirrors the single `training.networks` module of the official code, whose class names it keeps.
"""

from models.discriminator import (
    Discriminator,
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    MinibatchStdLayer,
)
from models.generator import Generator
from models.layers import Conv2dLayer, FullyConnectedLayer, normalize_2nd_moment
from models.mapping import MappingNetwork
from models.synthesis import SynthesisBlock, SynthesisLayer, SynthesisNetwork, ToRGBLayer

__all__ = [
    "Conv2dLayer",
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "FullyConnectedLayer",
    "Generator",
    "MappingNetwork",
    "MinibatchStdLayer",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "normalize_2nd_moment",
]
