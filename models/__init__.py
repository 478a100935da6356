"""GAN networks and their serialization, usable from a notebook with `import models`.

    G = models.load_generator("runs/demo")              # G_ema of the newest snapshot, eval mode
    img = G(z, c, truncation_psi=0.7, noise_mode="const")
    models.grid(img, nrow=8)                            # a PIL image (Jupyter shows it)
    with open("ffhq.pkl", "rb") as f:                   # the official legacy.load_network_pkl(f)
        G = models.load_network_pkl(f)["G_ema"]

`load_network` reads this project's code-free snapshots, official network pickles (without executing
code stored in them) and URLs. The networks keep the official constructor arguments and state_dict
names. Nothing here knows about MLflow, DVC or Prefect.

The names below are loaded on first use (PEP 562), so `import models.fileio` imports no torch and
`import models.clip` does not import every network: what a pipeline stage imports is what its DVC dependencies
say (tests/test_layout.py).
Code inside the project imports from the submodules; these names are for notebooks and user scripts.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AUGPIPE_SPECS": "models.augment",
    "AugmentParams": "models.augment",
    "AugmentPipe": "models.augment",
    "make_augment_pipe": "models.augment",
    "grid": "models.image_grid",
    "load_generator": "models.serialization.loading",
    "load_network": "models.serialization.loading",
    "load_network_pkl": "models.serialization.loading",
    "UnsafePickleError": "models.serialization.official_pickle",
    "UnsupportedPickleError": "models.serialization.official_pickle",
    "SnapshotError": "models.serialization.snapshot",
    "StateMismatchError": "models.serialization.snapshot",
    "load_snapshot": "models.serialization.snapshot",
    "save_snapshot": "models.serialization.snapshot",
    "Discriminator": "models.stylegan2.discriminator",
    "Generator": "models.stylegan2.generator",
    "MappingNetwork": "models.stylegan2.mapping",
    "SynthesisNetwork": "models.stylegan2.synthesis",
    "StyleGAN3Generator": "models.stylegan3.generator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
