"""The semantic head: linear heads + scaled prototype similarity + output-level prior mapping.

This module is the training-time twin of `edge.head` (NumPy reference) and the
fused CUDA kernel; docs/head.md is the shared specification. `export_params`
produces exactly the arrays the device side consumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6
PROB_CLAMP = 1e-4


@dataclass
class HeadOutput:
    fe_logits: torch.Tensor  # refined expression logits (B x E): cross-entropy target
    fe_prob: torch.Tensor  # softmax of fe_logits
    au_prob: torch.Tensor  # refined AU probabilities (B x A): BCE target
    fe_logits_raw: torch.Tensor  # before prior mapping
    au_logits_raw: torch.Tensor  # before prior mapping
    fe_sim: torch.Tensor  # cosine similarity to FE prototypes (B x E)
    au_sim: torch.Tensor  # cosine similarity to AU prototypes (B x A)


def prior_terms(mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From P(AU|FE) (E x A): expectation matrix (A x E), log-likelihood weights (E x A) and bias (E)."""
    m = mapping.clamp(PROB_CLAMP, 1 - PROB_CLAMP)
    return m.t(), torch.log(m) - torch.log1p(-m), torch.log1p(-m).sum(dim=1)


class SemanticHead(nn.Module):
    def __init__(self, dim: int, n_au: int, n_fe: int, scale_init: float = 10.0, mix_init: float = 0.2,
                 output_prior: bool = True, learn_scale: bool = True) -> None:
        super().__init__()
        self.output_prior = output_prior
        self.fe_linear = nn.Linear(dim, n_fe)
        self.au_linear = nn.Linear(dim, n_au)
        log_scale = torch.tensor(float(np.log(scale_init)))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:  # fixed (the public code's 0.1 / 0.01 = 10): a buffer, so no optimizer ever moves it
            self.register_buffer("log_scale", log_scale)
        # Output-level prior mixing weights, kept in (0, 1) through a sigmoid.
        self.mix_fe_logit = nn.Parameter(torch.logit(torch.tensor(mix_init)))
        self.mix_au_logit = nn.Parameter(torch.logit(torch.tensor(mix_init)))
        self.n_au = n_au

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(
        self, f: torch.Tensor, g: torch.Tensor, t_au: torch.Tensor, t_fe: torch.Tensor, mapping: torch.Tensor,
        au_filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> HeadOutput:
        """`au_filter` (optional) maps the AU logits before the sigmoid, e.g. the public code's two-frame
        smoothing (quantize.ssm.temporal.AUSmoothing), which needs the rows' clip layout."""
        fe_sim = F.normalize(f, dim=-1, eps=EPS) @ t_fe.t()
        au_sim = F.normalize(g, dim=-1, eps=EPS) @ t_au.t()
        z_fe = self.fe_linear(f) + self.scale * fe_sim
        z_au = self.au_linear(g) + self.scale * au_sim
        if au_filter is not None:
            z_au = au_filter(z_au)
        p_fe0 = torch.softmax(z_fe, dim=-1)
        p_au0 = torch.sigmoid(z_au)
        expect, loglik, bias = prior_terms(mapping)
        lam_fe, lam_au = self.mixing()
        fe_logits = z_fe + lam_fe * (p_au0 @ loglik.t() + bias) / self.n_au
        au_prob = (1 - lam_au) * p_au0 + lam_au * (p_fe0 @ expect.t())
        return HeadOutput(fe_logits, torch.softmax(fe_logits, dim=-1), au_prob, z_fe, z_au, fe_sim, au_sim)

    def mixing(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Output-level prior weights (lambda_E, lambda_A); both 0 when the output-level prior is off."""
        if not self.output_prior:
            zero = self.mix_fe_logit.new_zeros(())
            return zero, zero
        return torch.sigmoid(self.mix_fe_logit), torch.sigmoid(self.mix_au_logit)

    @torch.no_grad()
    def export_params(self, t_au: torch.Tensor, t_fe: torch.Tensor, mapping: torch.Tensor) -> dict[str, np.ndarray]:
        """The constant arrays of docs/head.md, float32, for the bundle's head file."""
        expect, loglik, bias = prior_terms(mapping)

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().to(torch.float32).numpy().copy()

        return {
            "fe_weight": arr(self.fe_linear.weight),
            "fe_bias": arr(self.fe_linear.bias),
            "au_weight": arr(self.au_linear.weight),
            "au_bias": arr(self.au_linear.bias),
            "fe_proto": arr(t_fe),
            "au_proto": arr(t_au),
            "scale": np.float32(self.scale.item()).reshape(()),
            "mix_fe": np.float32(self.mixing()[0].item()).reshape(()),
            "mix_au": np.float32(self.mixing()[1].item()).reshape(()),
            "prior_expect": arr(expect),
            "prior_loglik": arr(loglik),
            "prior_bias": arr(bias),
        }
