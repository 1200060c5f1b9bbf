"""TSP: textual semantic prototypes, CoOp-style.

Fixed class descriptions (from `edge.labels`) are tokenised once and kept as
buffers; learnable context vectors shared by all classes of a task are put in
front of each description; the frozen text encoder maps every prompt to one
vector, L2-normalised. Only the context vectors (and an optional projection
when the text and visual widths differ) learn. The output does not depend on
the input image, so at export the prototypes become constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from quantize.ssm.text import TextEncoder

EPS = 1e-6


class TextualPrototypes(nn.Module):
    def __init__(self, texts: Sequence[str], encoder: TextEncoder, n_ctx: int, dim: int,
                 per_class: bool = False) -> None:
        super().__init__()
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
        self.texts = list(texts)
        batch = encoder.tokens(self.texts)
        if encoder.max_len is not None and batch.embeds.shape[1] + n_ctx > encoder.max_len:
            raise ValueError(f"{n_ctx} context vectors + {batch.embeds.shape[1]} tokens exceed the text "
                             f"encoder's limit of {encoder.max_len}")
        self.register_buffer("token_prefix", batch.embeds[:, : batch.insert_at].clone())
        self.register_buffer("token_suffix", batch.embeds[:, batch.insert_at :].clone())
        self.register_buffer("mask_prefix", batch.mask[:, : batch.insert_at].clone())
        self.register_buffer("mask_suffix", batch.mask[:, batch.insert_at :].clone())
        shape = (len(self.texts), n_ctx, encoder.token_dim) if per_class else (n_ctx, encoder.token_dim)
        self.ctx = nn.Parameter(torch.randn(*shape) * 0.02)
        # Shared, frozen encoder: kept out of this module's parameters and state dict on purpose.
        self._encoder = (encoder,)
        self.proj = nn.Linear(encoder.out_dim, dim, bias=False) if encoder.out_dim != dim else None
        self._constant: torch.Tensor | None = None

    @property
    def encoder(self) -> TextEncoder:
        return self._encoder[0]

    def _encode(self) -> torch.Tensor:
        n = self.token_prefix.shape[0]
        ctx = self.ctx if self.ctx.ndim == 3 else self.ctx.unsqueeze(0).expand(n, -1, -1)
        embeds = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        ctx_mask = torch.ones(n, ctx.shape[1], dtype=torch.bool, device=embeds.device)
        mask = torch.cat([self.mask_prefix, ctx_mask, self.mask_suffix], dim=1)
        return self.encoder.encode(embeds, mask)

    def forward(self) -> torch.Tensor:
        if self.ctx.shape[-2] == 0:  # nothing learns inside the text tower: encode once
            if self._constant is None or self._constant.device != self.token_prefix.device:
                with torch.no_grad():
                    self._constant = self._encode()
            out = self._constant
        else:
            out = self._encode()
        if self.proj is not None:
            out = self.proj(out)
        return F.normalize(out, dim=-1, eps=EPS)
