"""`rank`: score samples against text prompts with CLIP and keep the best k per prompt.

    python -m stages.generate rank --network ffhq.pkl --seeds 0-499 --trunc 0.7 \\
        --prompt "a smiling face" --prompt "a face with glasses" --clip ViT-B/32 --top-k 9

Samples are rendered (or read from `--images FOLDER`) batch by batch and embedded at once; only the
embeddings and the images currently among some prompt's best k stay in memory, so 100,000 seeds cost time,
not memory. Outputs under `<outdir>/rank/`:

    scores.csv                              every (sample, prompt): seed or file, class, prompt, score, rank
    <prompt-slug>/top09.png                 the k best, best first, row by row
    <prompt-slug>/01-seed0042-score0.312.png  each of them (a folder's images are copied as they are)

The score is CLIP's cosine similarity between the image and prompt embeddings (OpenAI's preprocessing:
shorter side to the model's resolution with bicubic resampling, centre crop, CLIP mean/std). Ties keep
the earlier sample first.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from stages.common.errors import BadInput, EnvironmentFault
from stages.common.fileio import write_bytes_atomic, write_text_atomic
from stages.common.images import save_png, tile
from stages.common.seeds import class_labels, parse_seeds
from stages.generate.config import RankConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_OUR_FILES = re.compile(r"^(top\d+\.png|\d+-.+-score-?\d+\.\d+\.[A-Za-z]+)$")  # what a rerun may replace


# ----------------------------------------------------------------------------------------------------
# Pure pieces: embeddings, scores, order, names


@torch.no_grad()
def embed_prompts(clip: Any, prompts: Sequence[str]) -> torch.Tensor:  # -> [P, D], unit norm
    from models.clip import PromptTooLongError

    try:
        return clip.embed_texts(list(prompts)).cpu()
    except PromptTooLongError as exc:
        raise BadInput(f"--prompt {exc}") from None
    except ValueError as exc:  # a vocabulary whose merges and symbols disagree: the model folder is broken
        raise BadInput(f"--clip: the model's tokenizer cannot encode the prompts ({exc})") from None


@torch.no_grad()
def embed_images(clip: Any, images: Any) -> torch.Tensor:  # -> [N, D], unit norm
    """PIL images or uint8 [N, H, W, C] -> CLIP embeddings (OpenAI's preprocessing)."""
    return clip.embed_images(images).cpu()


def cosine_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> np.ndarray:  # -> [N, P]
    """Cosine similarities of unit-length embeddings."""
    return (image_emb.double() @ text_emb.double().t()).numpy()


def top_k(scores: np.ndarray, k: int) -> np.ndarray:  # [N, P] -> [P, min(k, N)] sample indices, best first
    """Per prompt, the indices of the k highest scores; a stable sort keeps the earlier sample first on ties."""
    order = np.argsort(-scores, axis=0, kind="stable")  # [N, P]
    return order[: min(k, scores.shape[0])].T


def ranks_of(scores: np.ndarray) -> np.ndarray:  # [N, P] -> [N, P] 1-based rank of each sample per prompt
    order = np.argsort(-scores, axis=0, kind="stable")
    ranks = np.empty_like(order)
    for p in range(scores.shape[1]):
        ranks[order[:, p], p] = np.arange(1, scores.shape[0] + 1)
    return ranks


def prompt_slugs(prompts: Sequence[str], max_len: int = 60) -> list[str]:
    """Folder names for prompts: lower case, runs of other characters as '-', unique ('-2', '-3' ...)."""
    out: list[str] = []
    for i, prompt in enumerate(prompts):
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:max_len].strip("-") or f"prompt-{i + 1}"
        base, n = slug, 2
        while slug in out:
            slug, n = f"{base}-{n}", n + 1
        out.append(slug)
    return out


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for n images, e.g. 9 -> 3x3, 10 -> 3 rows of 4."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


# ----------------------------------------------------------------------------------------------------
# Samples: rendered seeds or a folder of images


@dataclass
class Samples:
    """What is being ranked: a label per sample (seed number or file path relative to the folder)."""

    kind: str                                   # "seed" | "file"
    labels: list[str] = field(default_factory=list)
    class_idx: int | None = None                # the label every seed was rendered with (conditional G)


def iter_seed_batches(G: torch.nn.Module, seeds: list[int], c: torch.Tensor, cfg: RankConfig
                      ) -> Iterator[tuple[list[int], np.ndarray]]:
    """(sample indices, uint8 [B, H, W, C]) per batch of `seeds`, rendered as the `images` command renders."""
    from stages.generate.images import iter_seed_images

    images = iter_seed_images(G, seeds, c, trunc=cfg.trunc, trunc_cutoff=cfg.trunc_cutoff, noise_mode=cfg.noise_mode,
                              batch_size=cfg.batch_size)
    for start, batch in zip(range(0, len(seeds), cfg.batch_size), images):
        yield list(range(start, start + len(batch))), batch


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BadInput(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInput(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def open_image(path: Path) -> PIL.Image.Image | None:
    """The image, fully read, in a mode PIL can resize (16-bit and float images scaled to 8 bits); None when
    the file is not a readable image."""
    try:
        with PIL.Image.open(path) as im:
            im.load()
            if im.mode.startswith("I") or im.mode == "F":
                scale = 1.0 if im.mode == "F" else 1 / 257  # 16-bit: 65535 -> 255
                arr = np.asarray(im, dtype=np.float64) * scale
                return PIL.Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
            return im.copy()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
        return None


def iter_folder_batches(files: list[Path], batch_size: int, skipped: list[Path]) -> Iterator[tuple[list[int],
                                                                                                   list[Any]]]:
    """(indices into `files`, PIL images) per batch; unreadable files are appended to `skipped`."""
    for start in range(0, len(files), batch_size):
        idx, ims = [], []
        for i in range(start, min(start + batch_size, len(files))):
            im = open_image(files[i])
            if im is None:
                skipped.append(files[i])
                continue
            idx.append(i)
            ims.append(im)
        yield idx, ims


# ----------------------------------------------------------------------------------------------------
# The streaming ranker


class TopKeeper:
    """Scores of every sample, each prompt's running top k, and the pixels of the samples in some top k
    (the others are dropped as soon as they fall out, so memory holds at most k * prompts images).

    Rows are numbered in the order samples are added. The running top k sorts by score, then row, which is
    exactly the order of a stable sort of all scores at the end (`top_k`)."""

    def __init__(self, text_emb: torch.Tensor, k: int) -> None:
        self.text_emb, self.k = text_emb, k
        prompts = text_emb.shape[0]
        self.scores: list[np.ndarray] = []                          # per batch [B, P]
        self.index: list[int] = []                                  # row -> sample index
        self.best_rows = [np.zeros(0, np.int64) for _ in range(prompts)]
        self.best_scores = [np.zeros(0) for _ in range(prompts)]
        self.kept: dict[int, Any] = {}                              # row -> image (HWC uint8 or PIL)

    def add(self, indices: Sequence[int], image_emb: torch.Tensor, images: Sequence[Any]) -> None:
        batch = cosine_scores(image_emb, self.text_emb)           # [B, P]
        rows = np.arange(len(self.index), len(self.index) + len(indices))
        self.scores.append(batch)
        self.index.extend(indices)
        for p in range(batch.shape[1]):
            r = np.concatenate([self.best_rows[p], rows])
            sc = np.concatenate([self.best_scores[p], batch[:, p]])
            order = np.lexsort((r, -sc))[: self.k]                  # score descending, then row ascending
            self.best_rows[p], self.best_scores[p] = r[order], sc[order]
        keep = {int(r) for rows_p in self.best_rows for r in rows_p}
        # A copy, not a view: a view would keep its whole rendered batch alive.
        self.kept.update((int(r), im.copy() if isinstance(im, np.ndarray) else im)
                         for r, im in zip(rows, images) if int(r) in keep)
        self.kept = {r: im for r, im in self.kept.items() if r in keep}

    def all_scores(self) -> np.ndarray:  # [rows, P]
        return np.concatenate(self.scores) if self.scores else np.zeros([0, self.text_emb.shape[0]])


def rank_samples(clip: Any, text_emb: torch.Tensor, batches: Iterator[tuple[list[int], Any]], k: int,
                 progress: Any = None) -> TopKeeper:
    """Embed every batch against the prompt embeddings `text_emb` [P, D]; keep all scores and the current
    top-k images. `batches` yields (sample indices, images as uint8 [B, H, W, C] or a list of PIL images)."""
    keeper = TopKeeper(text_emb, k)
    for indices, images in batches:
        if len(indices):
            keeper.add(indices, embed_images(clip, images), list(images))
        if progress is not None:
            progress.update(len(indices))
    return keeper


# ----------------------------------------------------------------------------------------------------
# Outputs


def _score_text(score: float) -> str:
    return f"{score:.3f}"


def clear_previous(folder: Path) -> None:
    """Remove the files an earlier `rank` wrote in `folder` (a smaller k must not leave stale winners)."""
    if folder.is_dir():
        for f in folder.iterdir():
            if f.is_file() and _OUR_FILES.match(f.name):
                f.unlink()


def _grid_cells(images: list[Any]) -> np.ndarray:
    """[n, S, S, 3] uint8: every image centre-cropped to a square and resized to the smallest side among them
    (a folder's images differ in size; rendered ones are all G's size and pass unchanged)."""
    pils = [im if isinstance(im, PIL.Image.Image) else PIL.Image.fromarray(
        im[..., 0] if im.shape[-1] == 1 else im) for im in images]
    side = min(min(im.size) for im in pils)
    cells = []
    for im in pils:
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.convert("RGB").crop((left, top, left + s, top + s))
        if s != side:
            im = im.resize((side, side), PIL.Image.Resampling.LANCZOS)
        cells.append(np.asarray(im))
    return np.stack(cells)


def write_outputs(outdir: Path, prompts: Sequence[str], samples: Samples, scores: np.ndarray,
                  kept: dict[int, Any], k: int, files: list[Path] | None = None) -> list[Path]:
    """scores.csv, and per prompt the top-k grid and files. `kept` maps a row of `scores` to its pixels and
    holds every top-k sample; in folder mode `files[row]` is copied instead of re-encoding the pixels."""
    rank_dir = outdir / "rank"
    written: list[Path] = []
    order = top_k(scores, k)
    width = max(2, len(str(order.shape[1])))
    for p, slug in enumerate(prompt_slugs(prompts)):
        folder = rank_dir / slug
        clear_previous(folder)
        best = [int(i) for i in order[p]]
        rows, cols = grid_shape(len(best))
        written.append(save_png(tile(_grid_cells([kept[i] for i in best]), rows, cols),
                                folder / f"top{len(best):0{width}d}.png"))
        for r, i in enumerate(best, start=1):
            stem = f"{r:0{width}d}-{_sample_name(samples, i)}-score{_score_text(scores[i, p])}"
            if files is not None:
                written.append(write_bytes_atomic(folder / f"{stem}{files[i].suffix.lower()}", files[i].read_bytes()))
            else:
                written.append(save_png(kept[i], folder / f"{stem}.png"))
    written.append(write_scores_csv(rank_dir / "scores.csv", prompts, samples, scores))
    return written


def _sample_name(samples: Samples, i: int) -> str:
    if samples.kind == "seed":
        return f"seed{int(samples.labels[i]):04d}"
    stem = Path(samples.labels[i]).stem
    return re.sub(r"[^A-Za-z0-9._]+", "_", stem)[:80] or f"image{i}"


def write_scores_csv(path: Path, prompts: Sequence[str], samples: Samples, scores: np.ndarray) -> Path:
    """One row per (sample, prompt), prompt by prompt, best first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([samples.kind, "class", "prompt", "score", "rank"])
    ranks = ranks_of(scores)
    cls = "" if samples.class_idx is None else samples.class_idx
    for p, prompt in enumerate(prompts):
        for i in np.argsort(ranks[:, p], kind="stable"):
            writer.writerow([samples.labels[i], cls, prompt, f"{scores[i, p]:.6f}", int(ranks[i, p])])
    return write_text_atomic(path, buf.getvalue())


def summary_metrics(prompts: Sequence[str], scores: np.ndarray, k: int) -> dict[str, float]:
    """Per prompt: the best score and the mean of the top k (what MLflow plots across runs)."""
    order = top_k(scores, k)
    out: dict[str, float] = {}
    for p, slug in enumerate(prompt_slugs(prompts)):
        best = scores[order[p], p]
        out[f"rank.{slug}.top1"] = float(best[0])
        out[f"rank.{slug}.mean_top{len(best)}"] = float(best.mean())
    return out


# ----------------------------------------------------------------------------------------------------
# The command


def open_clip_model(cfg: RankConfig, device: torch.device) -> Any:
    """`cfg.clip` loaded, or a one-line error naming the settings that provide it."""
    from models.clip import ClipFormatError, ClipNotFoundError, ClipSourceError, load_clip

    hint = "(the model is chosen by --clip PATH_OR_NAME, params generate.rank.clip; names are cached in " \
           "$SG2_CACHE_DIR/clip)"
    try:
        return load_clip(cfg.clip or "", device=device)
    except ClipNotFoundError as exc:  # a known name that is not here and cannot be downloaded
        raise EnvironmentFault(f"{exc} {hint}") from None
    except ClipSourceError as exc:  # what the user named is not a CLIP model
        raise BadInput(f"{exc} {hint}") from None
    except ClipFormatError as exc:
        raise BadInput(f"--clip {cfg.clip}: {exc}") from None


def run_rank(cfg: RankConfig, progress: bool = True) -> tuple[list[Path], dict[str, float]]:
    """Rank `cfg.seeds` rendered by `cfg.network` (or the images of `cfg.images`) against `cfg.prompts`."""
    from models.serialization.loading import load_generator
    from stages.common.device import resolve_device
    from stages.common.progress import progress_bar

    device = resolve_device(cfg.device)
    outdir = Path(cfg.outdir)
    skipped: list[Path] = []
    # The inputs first (a mistyped path is exit 2 in a second), then CLIP.
    if cfg.images is not None:
        # Not what an earlier rank wrote into a folder it is ranking.
        files: list[Path] | None = [f for f in list_images(Path(cfg.images))
                                    if not f.resolve().is_relative_to((outdir / "rank").resolve())]
        if not files:
            raise BadInput(f"--images {cfg.images}: no images outside this command's own {outdir / 'rank'}")
        samples = Samples("file", [str(f.relative_to(cfg.images)) for f in files])
        batches: Iterator[tuple[list[int], Any]] = iter_folder_batches(files, cfg.batch_size, skipped)
    else:
        files = None
        G = load_generator(cfg.require_network(), device)
        seeds = parse_seeds(cfg.seeds)
        c = class_labels(G.c_dim, cfg.class_idx, len(seeds), all_classes_hint=False)
        if cfg.trunc_cutoff is not None and cfg.trunc_cutoff > G.num_ws:
            raise BadInput(f"--trunc-cutoff {cfg.trunc_cutoff} exceeds the network's {G.num_ws} ws")
        samples = Samples("seed", [str(s) for s in seeds], cfg.class_idx if G.c_dim else None)
        batches = iter_seed_batches(G, seeds, c, cfg)
    clip = open_clip_model(cfg, device)
    text_emb = embed_prompts(clip, cfg.prompts)
    with progress_bar(len(samples.labels), "rank", enabled=progress) as bar:
        keeper = rank_samples(clip, text_emb, batches, cfg.top_k, bar)
    if skipped:
        print(f"note: rank: skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}", file=sys.stderr)
    if not keeper.index:
        raise BadInput(f"--images {cfg.images}: none of the files is a readable image")
    # Rows are the scored samples in order (a folder's unreadable files have none).
    scores = keeper.all_scores()
    samples.labels = [samples.labels[i] for i in keeper.index]
    if files is not None:
        files = [files[i] for i in keeper.index]
    written = write_outputs(outdir, cfg.prompts, samples, scores, keeper.kept, cfg.top_k, files)
    return written, summary_metrics(cfg.prompts, scores, cfg.top_k)
