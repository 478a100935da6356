"""Frozen configs for the generate commands, read from the `generate:` section of params.yaml.

The section holds shared settings at its top level and one sub-section per command; a command's
sub-section wins over the shared values, and flags win over both:

    generate:
      network: null        # shared: snapshot / official pickle / URL
      trunc: 1.0
      images: {seeds: 0-7}
      video: {seeds: 0-31, grid: 1x1}
      rank: {prompts: ["a smiling face"], seeds: 0-63, top_k: 9, clip: ViT-B/32}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

from stages.common.config import ConfigError
from stages.common.seeds import parse_grid, parse_seeds

NoiseMode = Literal["const", "random", "none"]
COMMAND_SECTIONS = ("images", "style_mixing", "video", "project", "rank", "explore")


class GenerateError(ConfigError):
    """An argument that does not fit the network (class out of range, ...): one line, exit 2."""


@dataclasses.dataclass(frozen=True)
class CommonConfig:
    SECTION: ClassVar[str] = "generate"

    network: str | None = None          # snapshot (.safetensors), official pickle, or http(s)/file URL
    outdir: str = "out/generate"        # where images/grids/projections are written
    trunc: float = 1.0                  # truncation psi (1 = none), as official default
    trunc_cutoff: int | None = None     # truncate only the first N ws (None = all)
    noise_mode: NoiseMode = "const"     # const (deterministic) | random | none, official default const
    class_idx: int | None = None        # class label for conditional networks
    device: str = "cpu"                 # cpu | cuda | cuda:N | auto (cuda when available)
    batch_size: int = 8                 # images per forward pass
    mlflow: bool = False                # log the outputs as MLflow artifacts (also SG2_MLFLOW=1)
    precision: Literal["fp32", "bf16"] = "fp32"  # fp32 as official; bf16: synthesis blocks in bfloat16 (fast on
                                        # CPUs with AVX-512 BF16/AMX; images within a few grey levels)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise GenerateError(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if self.trunc_cutoff is not None and self.trunc_cutoff < 0:
            raise GenerateError("--trunc-cutoff must be >= 0")
        if self.batch_size > 4096:
            raise GenerateError("--batch-size must be <= 4096")
        if self.class_idx is not None and self.class_idx < 0:
            raise GenerateError(f"--class {self.class_idx} is out of range: classes are numbered from 0")
        if self.batch_size < 1:
            raise GenerateError("--batch-size must be >= 1")
        if not self.outdir:
            raise GenerateError("--outdir must not be empty")

    def require_network(self) -> str:
        if not self.network:
            raise GenerateError("no network: pass --network PATH_OR_URL or set generate.network in params.yaml")
        return self.network


@dataclasses.dataclass(frozen=True)
class ImagesConfig(CommonConfig):
    # --class on the command line makes a params.yaml `all_classes` step aside (official commands work as is).
    YIELDS_TO_FLAGS: ClassVar[dict[str, tuple[str, ...]]] = {"class_idx": ("all_classes",)}

    seeds: str = "0-7"                  # e.g. 0-35,40 (ranges inclusive)
    projected_w: str | None = None      # render saved ws (.npz with key 'w' [N, num_ws, w_dim]) instead of seeds
    grid: str | None = None             # COLSxROWS: tile the seeds into one grid.png
    all_classes: bool | None = None     # classes.png, one row per class; None = when the network is conditional
                                        # and no --class is given
    translate: str | None = None        # StyleGAN3: move the image by X,Y image sizes, e.g. 0.3,1 (official
                                        # gen_images.py); None = 0,0
    rotate: float | None = None         # StyleGAN3: rotate the image by DEG degrees; None = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_seeds(self.seeds)
        if self.grid is not None:
            parse_grid(self.grid)
        if self.translate is not None:
            parse_vec2(self.translate, "translate")
        if self.rotate is not None and not math.isfinite(self.rotate):
            raise GenerateError(f"--rotate must be a finite angle in degrees, got {self.rotate}")

    @property
    def transformed(self) -> bool:
        """Whether the user asked for a translation or rotation (StyleGAN3 only)."""
        return self.translate is not None or self.rotate is not None


@dataclasses.dataclass(frozen=True)
class StyleMixingConfig(CommonConfig):
    rows: str = "85,100,75,458,1500"    # row seeds: provide the coarse..fine styles not replaced
    cols: str = "55,821,1789,293"       # column seeds: provide the `styles` layers
    styles: str = "0-6"                 # ws indices copied from the column seed (0-6 = coarse + middle)

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_seeds(self.rows, "rows")
        parse_seeds(self.cols, "cols")
        parse_seeds(self.styles, "styles")


@dataclasses.dataclass(frozen=True)
class VideoConfig(CommonConfig):
    seeds: str = "0-31"                 # keyframe seeds, filled grid cell by grid cell: len % (R*C) == 0
    grid: str = "1x1"                   # COLSxROWS of simultaneous interpolations in each frame (official WxH)
    w_frames: int = 120                 # frames between two keyframes
    kind: Literal["cubic", "linear"] = "cubic"
    loop: bool = True                   # wrap around to the first keyframe (a seamless loop)
    output: str = "out/generate/video.mp4"  # .mp4 (libx264 via imageio-ffmpeg) or .gif (Pillow)
    fps: int = 60
    bitrate: str = "12M"                # MP4 only

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_seeds(self.seeds)
        parse_grid(self.grid)
        if not 1 <= self.w_frames <= 100_000:
            raise GenerateError("--w-frames must be in 1..100000")
        if not 1 <= self.fps <= 1000:
            raise GenerateError("--fps must be in 1..1000")
        if not self.output.lower().endswith((".mp4", ".gif")):
            raise GenerateError(f"--output must end in .mp4 or .gif, got {self.output!r}")


@dataclasses.dataclass(frozen=True)
class ProjectConfig(CommonConfig):
    target: str | None = None           # image to project (centre-cropped, resized to G's resolution)
    num_steps: int = 1000
    seed: int = 303                     # seeds the noise init and the w perturbation
    save_video: bool = True             # proj.mp4: target | rendering per step (official default on)
    detector_dir: str | None = None     # folder holding vgg16.pt (else cache / URL), see stages.metrics.detectors
    detector_url: str | None = None     # override the VGG16 URL
    # The official optimiser schedule (projector.py); kept here so every number is in params.yaml.
    w_avg_samples: int = 10000
    initial_learning_rate: float = 0.1
    initial_noise_factor: float = 0.05
    lr_rampdown_length: float = 0.25
    lr_rampup_length: float = 0.05
    noise_ramp_length: float = 0.75
    regularize_noise_weight: float = 1e5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision != "fp32":  # the projection optimises through G: its gradients want float32
            raise GenerateError("project runs in fp32 only (--precision bf16 is for rendering)")
        if not 1 <= self.num_steps <= 1_000_000:
            raise GenerateError("--num-steps must be in 1..1000000")
        if not 1 <= self.w_avg_samples <= 10_000_000:
            raise GenerateError("project.w_avg_samples must be in 1..10000000")
        if not 0 <= self.seed < 2**32:
            raise GenerateError("--seed must be in [0, 2**32)")
        for name in ("lr_rampdown_length", "lr_rampup_length", "noise_ramp_length"):
            if getattr(self, name) <= 0:
                raise GenerateError(f"project.{name} must be > 0")


@dataclasses.dataclass(frozen=True)
class RankConfig(CommonConfig):
    # --images ranks a folder instead of rendering: params.yaml's `network` steps aside for it; another
    # --network than params.yaml's makes its `class_idx` (a class of the demo network) step aside.
    YIELDS_TO_FLAGS: ClassVar[dict[str, tuple[str, ...]]] = {"images": ("network",), "network": ("class_idx",)}

    seeds: str = "0-63"                 # samples to render and rank, e.g. 0-499
    prompts: tuple[str, ...] = ()       # text prompts (--prompt, repeatable); none = the command is skipped
    clip: str | None = None             # CLIP folder / weight file / name (ViT-B/32, openai/clip-vit-base-patch32);
                                        # none = the command is skipped
    top_k: int = 9                      # images kept per prompt (grid + files)
    images: str | None = None           # rank the images of this folder instead of rendering seeds

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_seeds(self.seeds)
        if not 1 <= self.top_k <= 1000:
            raise GenerateError(f"--top-k must be in 1..1000, got {self.top_k}")
        for prompt in self.prompts:
            if not str(prompt).strip():
                raise GenerateError("--prompt: empty prompt")
        if self.images is not None and not self.images:
            raise GenerateError("--images must not be empty")
        if self.clip is not None and not self.clip.strip():
            raise GenerateError("--clip must not be empty")

    @property
    def configured(self) -> bool:
        """Whether there is something to rank with: prompts and a CLIP model."""
        return bool(self.prompts) and bool(self.clip)


@dataclasses.dataclass(frozen=True)
class ExploreConfig(CommonConfig):
    """`explore`: one web page on 127.0.0.1 to browse a generator (stages.generate.explore). `trunc`,
    `trunc_cutoff`, `noise_mode` and `class_idx` are the page's first settings; `batch_size` is the most images
    rendered in one batch."""

    compare: str | None = None          # a second network shown side by side on the same seeds (same forms as
                                        # --network: snapshot, run folder, models:/name@alias, URL)
    host: str = "127.0.0.1"             # listen address; 0.0.0.0 shows the page to other machines
    port: int = 8765                    # 0 = any free port (the address is printed)
    seed: int = 0                       # the page's first seed
    seed2: int = 1                      # interpolation: the other seed
    interp_frames: int = 24             # interpolation loop: frames from one seed to the other
    interp_fps: float = 8.0             # interpolation loop: frames per second (at most; slower when rendering is)
    mix_rows: str = "85,100,75"         # style-mixing panel: row seeds (coarse..fine styles kept)
    mix_cols: str = "55,821,1789"       # style-mixing panel: column seeds (the `mix_styles` layers taken)
    mix_styles: str = "0-6"             # style-mixing panel: ws taken from the column seed (clipped to num_ws)
    max_mix_seeds: int = 6              # style-mixing panel: at most this many row and column seeds
    batch_window_ms: float = 5.0        # dynamic batching: requests within this window share a batch (0 = off)
    max_queue: int = 64                 # images waiting to render; more -> 503 (the page retries)
    max_connections: int = 32           # open connections (one thread each); more -> 503
    timeout_s: float = 30.0             # idle connections are closed; a request queued this long gets 503
    max_body_bytes: int = 65536         # POST /api/image JSON bodies
    cache_networks: int = 4             # generators kept loaded (snapshot picker, side by side)
    fft_range_db: float = 50.0          # FFT view: dB span of the colour map (official visualizer default)
    fft_beta: float = 8.0               # FFT view: Kaiser window beta (official visualizer default)
    png_compress_level: int = 1         # 0-9: PNG deflate effort; 1 = fast, for a local link
    open_browser: bool = False          # open the page in the default browser at start

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise GenerateError("--port must be in 0..65535")
        if not self.host:
            raise GenerateError("--host must not be empty")
        for name in ("seed", "seed2"):
            if not 0 <= getattr(self, name) < 2**32:
                raise GenerateError(f"--{name} must be in [0, 2**32)")
        if not 2 <= self.interp_frames <= 1000:
            raise GenerateError("--interp-frames must be in 2..1000")
        if not 0.1 <= self.interp_fps <= 60:
            raise GenerateError("--interp-fps must be in 0.1..60")
        if not 1 <= self.max_mix_seeds <= 16:
            raise GenerateError("--max-mix-seeds must be in 1..16")
        for name in ("mix_rows", "mix_cols"):
            if len(parse_seeds(getattr(self, name), name)) > self.max_mix_seeds:
                raise GenerateError(f"--{name.replace('_', '-')}: at most {self.max_mix_seeds} seeds (max_mix_seeds)")
        parse_seeds(self.mix_styles, "mix-styles")
        if not 0 <= self.batch_window_ms <= 1000:
            raise GenerateError("--batch-window-ms must be in 0..1000")
        if not 1 <= self.max_queue <= 100_000 or not 1 <= self.max_connections <= 10_000:
            raise GenerateError("--max-queue must be in 1..100000 and --max-connections in 1..10000")
        if not 0 < self.timeout_s <= 3600:
            raise GenerateError("--timeout-s must be in (0, 3600]")
        if not 1024 <= self.max_body_bytes <= 2**24:
            raise GenerateError("--max-body-bytes must be in 1024..16777216")
        if not 1 <= self.cache_networks <= 64:
            raise GenerateError("--cache-networks must be in 1..64")
        if not (0 < self.fft_range_db <= 200 and 0 <= self.fft_beta <= 100):
            raise GenerateError("--fft-range-db must be in (0, 200] and --fft-beta in [0, 100]")
        if not 0 <= self.png_compress_level <= 9:
            raise GenerateError("--png-compress-level must be in 0..9")


def parse_vec2(text: str, what: str) -> tuple[float, float]:
    """'0.3,1' -> (0.3, 1.0): two finite numbers separated by a comma (the official `parse_vec2`)."""
    parts = str(text).replace(" ", "").split(",")
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        raise GenerateError(f"--{what}: expected two numbers X,Y, e.g. 0.3,1, got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise GenerateError(f"--{what}: expected finite numbers, got {text!r}")
    return x, y


def command_section(params_section: dict[str, Any] | None, command: str) -> dict[str, Any]:
    """Shared keys of `generate:` merged with its `<command>:` sub-section (the sub-section wins)."""
    section = dict(params_section or {})
    subs = {name: section.pop(name, None) for name in COMMAND_SECTIONS}
    merged = {k: v for k, v in section.items()}
    sub = subs.get(command) or {}
    if not isinstance(sub, dict):
        raise ConfigError(f"generate.{command} must be a mapping")
    merged.update(sub)
    return merged
