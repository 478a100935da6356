"""CLIP's ViT image encoder and text encoder (Radford et al. 2021), with OpenAI's parameter names.

The modules mirror `clip/model.py` of github.com/openai/CLIP (ViT models only) so that OpenAI's state dict
(`visual.conv1.weight`, `visual.transformer.resblocks.0.attn.in_proj_weight`, `token_embedding.weight`,
`text_projection`, `logit_scale`, ...) loads one to one; Hugging Face checkpoints are renamed onto these
names by `models.clip.weights`. Numerics follow OpenAI's code: QuickGELU, pre-LN residual blocks,
`nn.MultiheadAttention`, a causal mask on the text side, text features taken at the end-of-text token
(the highest token id of each row).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from models.clip.preprocess import preprocess

Activation = Literal["quick_gelu", "gelu"]


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Shapes of a ViT CLIP; the defaults are OpenAI's ViT-B/32."""

    embed_dim: int = 512                 # joint image-text embedding size
    image_resolution: int = 224          # input side in pixels (patch_size * grid)
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    vision_heads: int = 12               # OpenAI: vision_width // 64
    context_length: int = 77             # text tokens per prompt, start and end tokens included
    vocab_size: int = 49408
    transformer_width: int = 512         # text transformer width
    transformer_heads: int = 8           # OpenAI: transformer_width // 64
    transformer_layers: int = 12
    activation: Activation = "quick_gelu"  # OpenAI's models: x * sigmoid(1.702 x); "gelu" for some retrains
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(f"image_resolution {self.image_resolution} is not a multiple of the patch size "
                             f"{self.vision_patch_size}")
        for width, heads, what in ((self.vision_width, self.vision_heads, "vision"),
                                   (self.transformer_width, self.transformer_heads, "text")):
            if heads < 1 or width % heads:
                raise ValueError(f"{what} width {width} is not divisible by {heads} attention heads")
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"unknown activation {self.activation!r} (quick_gelu or gelu)")


def config_from_state_dict(state: dict[str, torch.Tensor], **overrides: Any) -> CLIPConfig:
    """The shapes of a ViT CLIP read off its OpenAI-named state dict, as OpenAI's `build_model` does
    (heads = width // 64 unless `overrides` say otherwise, e.g. from a config.json)."""
    if "visual.proj" not in state:
        if any(k.startswith("visual.layer1.") for k in state):
            raise ValueError("a ResNet CLIP (RN50 family); only ViT CLIP models are supported")
        raise ValueError("not a CLIP state dict (no visual.proj)")
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    patch = state["visual.conv1.weight"].shape[-1]
    vision_width = state["visual.conv1.weight"].shape[0]
    text_width = state["ln_final.weight"].shape[0]
    values: dict[str, Any] = dict(
        embed_dim=state["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_layers=len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}),
        vision_width=vision_width,
        vision_patch_size=patch,
        vision_heads=max(vision_width // 64, 1),
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        transformer_width=text_width,
        transformer_heads=max(text_width // 64, 1),
        transformer_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return CLIPConfig(**values)


class QuickGELU(nn.Module):
    """GELU's sigmoid approximation, which OpenAI's CLIP models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, activation: Activation, eps: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU() if activation == "quick_gelu" else nn.GELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # [NLD]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, activation: Activation, eps: float) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, activation, eps) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # [NLD]
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        width = cfg.vision_width
        self.input_resolution = cfg.image_resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.vision_patch_size, stride=cfg.vision_patch_size, bias=False)
        scale = width**-0.5
        grid = cfg.image_resolution // cfg.vision_patch_size
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads, cfg.activation, cfg.layer_norm_eps)
        self.ln_post = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, R, R] normalized pixels -> [N, embed_dim]
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    """OpenAI's CLIP (ViT) with `encode_image`, `encode_text` and `forward -> (logits_per_image,
    logits_per_text)` as in the official code, plus conveniences for notebooks once a tokenizer is attached
    (`load_clip` does that): `embed_images`, `embed_texts`, `score`."""

    def __init__(self, cfg: CLIPConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = cfg or CLIPConfig(**kwargs)
        self.config = cfg
        self.context_length = cfg.context_length
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(cfg.transformer_width, cfg.transformer_layers, cfg.transformer_heads,
                                       cfg.activation, cfg.layer_norm_eps)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.transformer_width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.transformer_width) * 0.01)
        self.ln_final = nn.LayerNorm(cfg.transformer_width, eps=cfg.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.randn(cfg.transformer_width, cfg.embed_dim)
                                            * cfg.transformer_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        # Causal: token i attends to tokens <= i (additive mask, -inf above the diagonal). Not persistent, as in
        # OpenAI's state dict, which holds no mask.
        mask = torch.full([cfg.context_length, cfg.context_length], float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.tokenizer: Any = None  # a models.clip.tokenizer.CLIPTokenizer, attached by load_clip

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:  # [N, 3, R, R] -> [N, embed_dim]
        return self.visual(image.to(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:  # [N, context_length] token ids -> [N, embed_dim]
        x = self.token_embedding(text).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x, self.attn_mask.to(x.dtype)))
        # Features at the end-of-text token, the highest id in each row (OpenAI's rule).
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_features = nn.functional.normalize(self.encode_image(image), dim=-1)
        text_features = nn.functional.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()

    # --------------------------------------------------------------------------------------------
    # Conveniences: raw images and strings in, unit-length embeddings out.

    def preprocess(self, images: Any) -> torch.Tensor:
        """OpenAI's preprocessing to this model's resolution (see `models.clip.preprocess`)."""
        return preprocess(images, self.config.image_resolution)

    def tokenize(self, texts: str | Sequence[str], truncate: bool = False) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer attached to this CLIP (load it with models.clip.load_clip)")
        return self.tokenizer(texts, context_length=self.context_length, truncate=truncate)

    @torch.no_grad()
    def embed_images(self, images: Any, batch_size: int = 64) -> torch.Tensor:  # -> [N, embed_dim], unit norm
        """Images (PIL, uint8 NHWC, or generator output NCHW in [-1, 1]) -> L2-normalized embeddings."""
        pixels = self.preprocess(images)
        parts = [self.encode_image(pixels[i : i + batch_size].to(self.device)) for i in range(0, len(pixels),
                                                                                             batch_size)]
        return nn.functional.normalize(torch.cat(parts).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: str | Sequence[str]) -> torch.Tensor:  # -> [P, embed_dim], unit norm
        return nn.functional.normalize(self.encode_text(self.tokenize(texts).to(self.device)).float(), dim=-1)

    def score(self, images: Any, texts: str | Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Cosine similarity [N images, P texts] (CLIP score before the logit scale)."""
        return self.embed_images(images, batch_size) @ self.embed_texts(texts).t()
