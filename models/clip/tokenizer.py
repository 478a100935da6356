"""CLIP's byte-level BPE tokenizer (OpenAI's `simple_tokenizer.py`), without the `regex` and `ftfy` packages.

The vocabulary is data that comes with a model, never with this code: either OpenAI's
`bpe_simple_vocab_16e6.txt.gz` (merges only; the vocabulary is 256 byte symbols, the same with an
end-of-word mark `</w>`, one symbol per merge, then `<|startoftext|>` and `<|endoftext|>`), or a Hugging
Face model folder's `vocab.json` + `merges.txt`. Both give the same ids for OpenAI's models
(e.g. "a photo of a cat" -> 49406 320 1125 539 320 2368 49407).

Two deliberate differences from the official code, both invisible for ordinary prompts:
- OpenAI's pattern uses Unicode classes (`\\p{L}`, `\\p{N}`) of the `regex` package; here a small scanner over
  `unicodedata` categories splits text exactly the same way (tested against `regex` where it is installed).
- `ftfy.fix_text` (repairs mojibake such as "cafÃ©") is not applied, so the ids never depend on whether an
  optional package happens to be installed.
"""

from __future__ import annotations

import gzip
import html
import itertools
import json
import os
import re
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # in the official pattern's order
OPENAI_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
HF_VOCAB_FILE, HF_MERGES_FILE = "vocab.json", "merges.txt"


class PromptTooLongError(ValueError):
    """A text does not fit the model's context (77 tokens for OpenAI's models, start and end included)."""


@cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character, the reversible table of GPT-2/CLIP BPE (no whitespace or control chars)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def basic_clean(text: str) -> str:
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _category(ch: str) -> str:
    return unicodedata.category(ch)[0]


def pretokenize(text: str) -> list[str]:
    """Split cleaned, lower-cased text as OpenAI's pattern does:
    `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`
    (alternatives tried in this order at each position; whitespace between matches skipped)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        special = next((s for s in (SOT, EOT, *_CONTRACTIONS) if text.startswith(s, i)), None)
        if special is not None:
            out.append(special)
            i += len(special)
            continue
        kind = _category(ch)
        j = i + 1
        if kind == "L":      # a run of letters
            while j < n and _category(text[j]) == "L":
                j += 1
        elif kind != "N":    # a run of anything but letters, numbers and whitespace (a number stands alone)
            while j < n and _category(text[j]) not in ("L", "N") and not text[j].isspace():
                j += 1
        out.append(text[i:j])
        i = j
    return out


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(word))


class CLIPTokenizer:
    """`tokenizer(texts) -> [N, context_length]` int64 ids: start token, BPE ids, end token, zero padding."""

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]]) -> None:
        for special in (SOT, EOT):
            if special not in encoder:
                raise ValueError(f"vocabulary lacks the special token {special}")
        self.encoder = dict(encoder)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.merges = [tuple(m) for m in merges]
        self.bpe_ranks = {m: i for i, m in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, str] = {SOT: SOT, EOT: EOT}

    # ---------------------------------------------------------------------------------------------
    # Vocabulary files

    @classmethod
    def from_openai_bpe(cls, path: str | os.PathLike, vocab_size: int | None = None) -> CLIPTokenizer:
        """OpenAI's merges file (gzip text, a version line then one merge per line). OpenAI's models use the
        first 49152 - 256 - 2 merges; with `vocab_size` given, as many as fill that vocabulary."""
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")[1:]
        count = (vocab_size - 512 - 2) if vocab_size is not None else 49152 - 256 - 2
        merges = [tuple(line.split()) for line in lines[:count] if line.strip()]
        symbols = list(bytes_to_unicode().values())
        vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), SOT, EOT]
        return cls({s: i for i, s in enumerate(vocab)}, merges)  # type: ignore[arg-type]

    @classmethod
    def from_vocab_merges(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> CLIPTokenizer:
        """A Hugging Face folder's `vocab.json` (symbol -> id) and `merges.txt` ('#version' line, then merges)."""
        encoder = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        return cls(encoder, merges)  # type: ignore[arg-type]

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write `vocab.json` + `merges.txt` (the Hugging Face layout, readable by `from_vocab_merges` and by
        transformers' CLIPTokenizer)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab, merges = folder / HF_VOCAB_FILE, folder / HF_MERGES_FILE
        vocab.write_text(json.dumps(self.encoder, ensure_ascii=False), encoding="utf-8")
        merges.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges), encoding="utf-8")
        return [vocab, merges]

    # ---------------------------------------------------------------------------------------------
    # Encoding

    def bpe(self, token: str) -> str:
        """Space-separated BPE symbols of one pre-token (already mapped to byte symbols)."""
        if token in self._cache:
            return self._cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        pairs = _pairs(word)
        while pairs:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if word[i] == first and i + 1 < len(word) and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            pairs = _pairs(word) if len(word) > 1 else set()
        result = " ".join(word)
        self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without the start and end tokens."""
        ids: list[int] = []
        for token in pretokenize(whitespace_clean(basic_clean(text)).lower()):
            symbols = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            for piece in self.bpe(symbols).split(" "):
                if piece not in self.encoder:
                    raise ValueError(f"BPE symbol {piece!r} is not in the vocabulary (merges and vocab disagree)")
                ids.append(self.encoder[piece])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of BPE ids (the official `decode`: end-of-word marks become spaces)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
        """[N, context_length] int64: start token, ids, end token, zeros (OpenAI's `clip.tokenize`)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > context_length:
                if not truncate:
                    raise PromptTooLongError(f"{text!r} is {len(ids)} tokens long; the model takes {context_length} "
                                             "(start and end tokens included)")
                ids = [*ids[: context_length - 1], self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
