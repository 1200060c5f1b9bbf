"""DPM: dynamic prior mapping between expressions and AUs (docs/head.md).

The FACS prior M0 (E x A) is kept as logits; learned corrections are added in
logit space so the mapping stays a probability P(AU | expression) in (0, 1).
Row-normalised views of it drive the bidirectional prototype transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.labels import LabelSpace, facs_prior

EPS = 1e-6


class DynamicPriorMapping(nn.Module):
    def __init__(self, space: LabelSpace, off: float = 0.05, on: float = 0.95, gate_init: float = 0.1) -> None:
        super().__init__()
        prior = torch.from_numpy(facs_prior(space, off=off)).clamp(max=on)
        self.register_buffer("prior_logit", torch.logit(prior))
        self.correction = nn.Parameter(torch.zeros_like(prior))
        # Learnable transfer gates a (AU -> FE prototypes) and b (FE -> AU prototypes).
        self.gate_ae = nn.Parameter(torch.tensor(gate_init))
        self.gate_ea = nn.Parameter(torch.tensor(gate_init))

    def mapping(self) -> torch.Tensor:
        """P(AU | expression), E x A."""
        return torch.sigmoid(self.prior_logit + self.correction)

    def transfer(self, t_au: torch.Tensor, t_fe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bidirectional prototype transfer: returns (T_A', T_E'), L2-normalised rows."""
        m = self.mapping()
        m_ae = m / m.sum(dim=1, keepdim=True)  # E x A: each expression's AU mixture
        m_ea = m.t() / m.t().sum(dim=1, keepdim=True)  # A x E: each AU's expression mixture
        t_fe2 = F.normalize(t_fe + self.gate_ae * (m_ae @ t_au), dim=-1, eps=EPS)
        t_au2 = F.normalize(t_au + self.gate_ea * (m_ea @ t_fe), dim=-1, eps=EPS)
        return t_au2, t_fe2

    def prior_loss(self) -> torch.Tensor:
        """Keeps the learned mapping close to FACS: mean squared logit correction."""
        return self.correction.pow(2).mean()
