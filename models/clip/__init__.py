"""CLIP for ranking generated images by text, in plain PyTorch, loadable offline.

    from models.clip import load_clip
    clip = load_clip("ViT-B/32")                        # or "openai/clip-vit-base-patch32", or a folder
    scores = clip.score(G(z, c), ["a smiling face"])     # [N, 1] cosine similarities

Why a CLIP of our own (~420 lines of encoders and tokenizer, ~400 more to read every published weight
layout and cache it) rather than a package:
- `clip` (OpenAI) and `open_clip_torch` import torchvision, which does not load next to the pinned CPU
  torch, and OpenAI's is installed from git only; `transformers` works, but is ~130 MB more to install, ~8 s
  to import, and an extra every machine (CI included) would need before the ranking can be tested at all.
- One implementation with OpenAI's parameter names reads both published forms of the same weights:
  OpenAI's `ViT-B-32.pt` (what `clip.load` users already have in `~/.cache/clip`) and Hugging Face folders
  (`openai/clip-vit-base-patch32`, or what `CLIPModel.save_pretrained` writes), and it is small enough to read.
- Correctness is pinned by tests, not assumed: the tokenizer against OpenAI's reference ids, and the
  encoders against `transformers.CLIPModel` on a random tiny model where transformers is installed.
"""

from models.clip.loading import ClipNotFoundError, ClipSourceError, available_models, clip_cache_dir, load_clip
from models.clip.model import CLIP, CLIPConfig, config_from_state_dict
from models.clip.preprocess import CLIP_MEAN, CLIP_STD, preprocess
from models.clip.tokenizer import CLIPTokenizer, PromptTooLongError
from models.clip.weights import ClipFormatError, build_clip, read_state_dict, save_clip

__all__ = [
    "CLIP",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPConfig",
    "CLIPTokenizer",
    "ClipFormatError",
    "ClipNotFoundError",
    "ClipSourceError",
    "PromptTooLongError",
    "available_models",
    "build_clip",
    "clip_cache_dir",
    "config_from_state_dict",
    "load_clip",
    "preprocess",
    "read_state_dict",
    "save_clip",
]
