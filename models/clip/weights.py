"""CLIP weight files -> an OpenAI-named state dict and a `CLIPConfig`; and the one folder layout we write.

Read (the format is told by the file, not its name):
- OpenAI's release files (`ViT-B-32.pt`: a TorchScript archive with fp16 weights), read through
  `torch.jit.load(...).state_dict()` as OpenAI's own `clip.load` does; plain `torch.save` state dicts too.
- Hugging Face checkpoints (`model.safetensors` or `pytorch_model.bin`, names `vision_model.*`,
  `text_model.*`): renamed onto OpenAI's names, q/k/v projections concatenated into `in_proj_*`, the two
  projections transposed. Heads and activation come from the folder's `config.json`.
- `.safetensors` with OpenAI's names, as `save_clip` writes them.
Pickled `.bin`/`.pt` files are opened with `torch.load(weights_only=True)`, which executes no code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from models.clip.model import CLIP, CLIPConfig, config_from_state_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "openai-clip"   # `format` key of the config.json that save_clip writes
_IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")  # scalars in OpenAI's archives


class ClipFormatError(ValueError):
    """A file that is not a CLIP checkpoint this code can read; says which and why."""


# ----------------------------------------------------------------------------------------------------
# Files -> tensors


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a weight file, float32, on CPU."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif _is_torchscript(path):
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text here is a page about weights_only; say what it means
        raise ClipFormatError(f"{path}: not a CLIP weight file (a pickle that is not a plain tensor state dict, or "
                              "not a pickle at all; nothing in it was run)") from exc
    except (RuntimeError, OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ClipFormatError(f"{path}: not a readable CLIP weight file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipFormatError(f"{path}: expected a state dict of tensors")
    # The causal mask is rebuilt from the shapes; a traced archive may carry it as a buffer.
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()
            if k not in _IGNORED_KEYS and not k.endswith("attn_mask")}


# ----------------------------------------------------------------------------------------------------
# Hugging Face names -> OpenAI names

_HF_RENAMES = [  # (pattern, replacement) applied in order to every key; layer parts first
    (r"^text_model\.embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]
_QKV = re.compile(r"^(.*)\.self_attn\.(q|k|v)_proj\.(weight|bias)$")


def is_hf_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("text_model.", "vision_model.")) for k in state)


def hf_to_openai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face `CLIPModel` state dict onto OpenAI's names (the two are the same network)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # an index buffer, not a weight
        if key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()  # Linear [embed, width] -> OpenAI's [width, embed]
            continue
        if key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
            continue
        new = key
        for pattern, repl in _HF_RENAMES:
            new = re.sub(pattern, repl, new)
        if m := _QKV.match(new):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        out[new] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ClipFormatError(f"{prefix}: q/k/v projections incomplete ({sorted(parts)})")
        out[f"{prefix}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _hf_config_value(config: dict[str, Any], tower: str, key: str) -> Any:
    # Older hub configs keep a second copy under `<tower>_config_dict`; either may hold the value.
    for section in (f"{tower}_config", f"{tower}_config_dict"):
        value = (config.get(section) or {}).get(key)
        if value is not None:
            return value
    return None


def config_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """What a config.json adds to the shapes in the weights: heads, activation, layer-norm epsilon."""
    if config.get("format") == FORMAT_NAME:
        fields = {f.name for f in dataclasses.fields(CLIPConfig)}
        return {k: v for k, v in config.items() if k in fields}
    act = _hf_config_value(config, "text", "hidden_act")
    vision_act = _hf_config_value(config, "vision", "hidden_act")
    if act is not None and vision_act is not None and act != vision_act:
        raise ClipFormatError(f"text and vision activations differ ({act} vs {vision_act}); not supported")
    act = act or vision_act
    if act is not None and act not in ("quick_gelu", "gelu"):
        raise ClipFormatError(f"activation {act!r} is not supported (quick_gelu or gelu)")
    return {
        "vision_heads": _hf_config_value(config, "vision", "num_attention_heads"),
        "transformer_heads": _hf_config_value(config, "text", "num_attention_heads"),
        "activation": act,
        "layer_norm_eps": _hf_config_value(config, "text", "layer_norm_eps"),
    }


def build_clip(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None, what: str = "CLIP") -> CLIP:
    """A CLIP in eval mode from an OpenAI- or Hugging-Face-named state dict and an optional config.json."""
    if is_hf_state_dict(state):
        state = hf_to_openai(state)
    try:
        cfg = config_from_state_dict(state, **config_overrides(config or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ClipFormatError(f"{what}: {exc}") from exc
    model = CLIP(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ClipFormatError(f"{what}: state dict does not match a ViT CLIP (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]})")
    return model.eval().requires_grad_(False)


def save_clip(folder: str | os.PathLike, model: CLIP) -> list[Path]:
    """Write `model.safetensors` (OpenAI's names), `config.json` and, when attached, the tokenizer's
    `vocab.json` + `merges.txt`: a folder `load_clip` reads back offline."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    config = folder / CONFIG_FILE
    config.write_text(json.dumps({"format": FORMAT_NAME, **dataclasses.asdict(model.config)}, indent=1))
    files = [weights, config]
    if model.tokenizer is not None:
        files += model.tokenizer.save(folder)
    return files
