"""Temporal transformers: one per task (paper: depth 1, 8 heads of 64, MLP 1024).

`ClipPooling` summarises a clip into one expression feature through a learned
CLS token; `FrameContext` returns one contextualised AU feature per frame.
Both are pre-norm transformers with a gated residual from their input and a
final LayerNorm. A single image is a clip of length 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head)
        self.ff_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.ff_norm(x)), approximate="tanh"))


class _Temporal(nn.Module):
    def __init__(self, dim: int, max_len: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 extra_tokens: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len + extra_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.gate = nn.Parameter(torch.ones(1))

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] > self.pos_embedding.shape[1]:
            raise ValueError(f"clip of {x.shape[1]} tokens exceeds the temporal model's {self.max_len} frames")
        res = x + self.pos_embedding[:, : x.shape[1]]
        y = res
        for block in self.blocks:
            y = block(y)
        return y, res


class ClipPooling(_Temporal):
    def __init__(self, dim: int, max_len: int = 16, depth: int = 1, heads: int = 8, dim_head: int = 64,
                 mlp_dim: int = 1024) -> None:
        super().__init__(dim, max_len, depth, heads, dim_head, mlp_dim, extra_tokens=1)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x T x D -> B x D."""
        y, res = self._run(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1))
        return self.ln(y[:, 0] + self.gate * res[:, 0])


class FrameContext(_Temporal):
    def __init__(self, dim: int, max_len: int = 16, depth: int = 1, heads: int = 8, dim_head: int = 64,
                 mlp_dim: int = 1024) -> None:
        super().__init__(dim, max_len, depth, heads, dim_head, mlp_dim, extra_tokens=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x T x D -> B x T x D."""
        y, res = self._run(x)
        return self.ln(y + self.gate * res)
