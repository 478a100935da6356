"""generate: samples, class grids, style mixing, interpolation videos and projection from a trained G.

Each command is a pure function here (`generate_images`, `style_mixing`, `render_video`, `run_projection`,
`convert_network`) taking a loaded generator or a config; `stages/generate.py` is the thin CLI on top.
"""

from stages.generation.config import (
    GenerateError,
    ImagesConfig,
    ProjectConfig,
    StyleMixingConfig,
    VideoConfig,
)
from stages.generation.images import generate_images, images_to_uint8, make_grid, save_image
from stages.generation.projector import project, run_projection
from stages.generation.seeds import parse_grid, parse_seeds, seeds_to_z
from stages.generation.style_mixing import style_mixing
from stages.generation.video import render_video

__all__ = [
    "GenerateError",
    "ImagesConfig",
    "ProjectConfig",
    "StyleMixingConfig",
    "VideoConfig",
    "generate_images",
    "images_to_uint8",
    "make_grid",
    "parse_grid",
    "parse_seeds",
    "project",
    "render_video",
    "run_projection",
    "save_image",
    "seeds_to_z",
    "style_mixing",
]
