"""Temporal transformers: one per task (paper: depth 1, 8 heads of 64, MLP 1024).

`ClipPooling` summarises a clip into one expression feature through a learned
CLS token; `FrameContext` returns one contextualised AU feature per frame.
Both are pre-norm transformers with a gated residual from their input and a
final LayerNorm. A single image is a clip of length 1.

The public SSM code (MSA-LMC/SSM) uses `ClipPooling`'s structure for
expressions but not a transformer for AUs: `LocalFrameContext` (config
`au_temporal="local"`) is that AU module, one bounded local attention update
per frame, and `AUSmoothing` its learned two-frame filter on the AU logits
(config `au_smooth`). Both are written here from the published formulation
(docs/teacher.md, "Fidelity to the public code").
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


class LocalFrameAttention(nn.Module):
    """One bounded update of each frame from its neighbours within `radius` (the public SSM AU temporal layer).

    Queries and keys are linear maps (no bias) of the LayerNorm'd frames, split into `heads` groups of
    `dim_head` channels (heads x dim_head must equal dim); a learned bias per head and relative offset
    (-radius..radius, starting at 1 on the frame itself, 0 elsewhere) is added to the scaled scores, and frames
    farther than `radius` are masked out. The values are the raw frames themselves (no value or output
    projection), so the attended context is a convex mix of real observations. Each channel then moves towards
    it by at most `max_update`: x + max_update * tanh(channel_gate) * (context - x), with the gate starting at 0
    (the layer starts as the identity). Any clip length works; a single frame is returned unchanged.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, radius: int = 1,
                 max_update: float = 0.25) -> None:
        super().__init__()
        if heads * dim_head != dim:
            raise ValueError(f"local frame attention splits the raw frames into heads: heads x dim_head "
                             f"({heads} x {dim_head}) must equal the feature width {dim}")
        if radius < 1:
            raise ValueError(f"local frame attention radius must be >= 1, got {radius}")
        if not 0.0 < max_update <= 1.0:
            raise ValueError(f"max_update must be in (0, 1], got {max_update}")
        self.heads, self.dim_head, self.radius, self.max_update = heads, dim_head, radius, float(max_update)
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.to_q.weight, gain=0.5)
        with torch.no_grad():  # same projection for both at the start: scores begin as a similarity
            self.to_k.weight.copy_(self.to_q.weight)
        bias = torch.zeros(heads, 2 * radius + 1)
        bias[:, radius] = 1.0
        self.relative_position_bias = nn.Parameter(bias)
        self.channel_gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x T x D -> B x T x D."""
        b, t, d = x.shape
        y = self.norm(x)
        q = self.to_q(y).view(b, t, self.heads, self.dim_head).transpose(1, 2)  # B x H x T x dh
        k = self.to_k(y).view(b, t, self.heads, self.dim_head).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * self.dim_head**-0.5  # B x H x T x T
        pos = torch.arange(t, device=x.device)
        offset = pos[None, :] - pos[:, None]  # key index - query index
        near = offset.abs() <= self.radius
        bias = self.relative_position_bias[:, offset.clamp(-self.radius, self.radius) + self.radius]  # H x T x T
        scores = (scores + bias.to(scores.dtype)).masked_fill(~near, float("-inf"))
        values = x.view(b, t, self.heads, self.dim_head).transpose(1, 2)
        context = (scores.softmax(dim=-1) @ values).transpose(1, 2).reshape(b, t, d)
        return x + self.max_update * torch.tanh(self.channel_gate).to(x.dtype) * (context - x)


class LocalFrameContext(nn.Module):
    """AU features per frame from a stack of `LocalFrameAttention` layers (config `au_temporal="local"`).

    Unlike `FrameContext` there is no positional embedding, feed-forward, gate or final LayerNorm: the output
    stays an interpolation of the backbone's frame features.
    """

    def __init__(self, dim: int, depth: int = 1, heads: int = 8, dim_head: int = 64, radius: int = 1,
                 max_update: float = 0.25) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"local frame attention depth must be >= 1, got {depth}")
        self.layers = nn.ModuleList(LocalFrameAttention(dim, heads, dim_head, radius, max_update)
                                    for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x T x D -> B x T x D."""
        for layer in self.layers:
            x = layer(x)
        return x


class AUSmoothing(nn.Module):
    """Learned per-AU filter over AU logits of consecutive frame pairs (the public SSM `au_smooth`).

    The frames of a clip are taken in non-overlapping pairs (0, 1), (2, 3), ...; within each pair every AU's
    two logits go through a depthwise 1-D convolution of width 2K + 1 with zero padding K (weight A x 1 x
    (2K + 1), no bias, starting as the mean filter 1 / (2K + 1)), so each output frame mixes itself and its
    pair partner. The public model only sees 16-frame clips; here a trailing unpaired frame (odd clip lengths,
    a single image) is paired with a copy of itself, i.e. treated as a still.
    """

    def __init__(self, n_au: int, half_window: int = 2) -> None:
        super().__init__()
        if half_window < 0:
            raise ValueError(f"AU smoothing half-window must be >= 0, got {half_window}")
        self.half_window = half_window
        width = 2 * half_window + 1
        self.weight = nn.Parameter(torch.full((n_au, 1, width), 1.0 / width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """AU logits B x T x A -> B x T x A."""
        b, t, a = z.shape
        if t % 2:
            z = torch.cat([z, z[:, -1:]], dim=1)
        pairs = z.reshape(-1, 2, a).transpose(1, 2)  # (B * T/2) x A x 2
        out = F.conv1d(pairs, self.weight, padding=self.half_window, groups=a)
        return out.transpose(1, 2).reshape(b, -1, a)[:, :t]
