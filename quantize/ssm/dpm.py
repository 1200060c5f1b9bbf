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


class SSMPriorMapping(nn.Module):
    """DPM as the public SSM code builds it (MSA-LMC/SSM; docs/teacher.md, "Fidelity to the public code").

    The FACS prior M0 (E x A) holds `linked` where FACS links an expression to an AU and `unlinked` elsewhere;
    neutral links nothing. Two learned maps start equal to it:

    - AU -> expression (E x A): softmax over AUs of log M0 + delta_ae, times each row's prior total, so the
      learning moves mass between an expression's AUs but keeps its amount; the neutral row stays M0's.
    - expression -> AU (A x E): softmax over the non-neutral expressions of log M0^T + delta_ea, times each
      AU's prior total minus the neutral share; the neutral column stays M0's.

    Prototypes: T_E' = norm(T_E + sigmoid(alpha) M_ae T_A), T_A' = norm(T_A + sigmoid(beta) M_ea T_E), gates
    starting at 0.1. `mapping()` (P(AU | expression) for the output-level prior, this project's addition) is
    the AU -> expression map clamped into (0, 1). Nothing regularises the maps towards the prior: as in the
    public code, the softmax parameterisation alone keeps their mass where FACS put it.
    """

    def __init__(self, space: LabelSpace, linked: float = 1.0, unlinked: float = 0.02,
                 gate_init: float = 0.1) -> None:
        super().__init__()
        links = torch.from_numpy(facs_prior(space, off=0.0)) > 0
        prior = torch.where(links, torch.tensor(linked), torch.tensor(unlinked))
        self.register_buffer("prior", prior)
        neutral = torch.tensor([e == "neutral" for e in space.expressions])
        self.register_buffer("neutral", neutral)
        self.delta_ae = nn.Parameter(torch.zeros_like(prior))
        self.delta_ea = nn.Parameter(torch.zeros_like(prior.t()))
        gate = float(torch.logit(torch.tensor(gate_init)))
        self.alpha = nn.Parameter(torch.tensor(gate))
        self.beta = nn.Parameter(torch.tensor(gate))

    def map_ae(self) -> torch.Tensor:
        """AU -> expression map, E x A; rows keep the prior's totals."""
        m = torch.softmax(torch.log(self.prior + 1e-8) + self.delta_ae, dim=1) * self.prior.sum(1, keepdim=True)
        return torch.where(self.neutral[:, None], self.prior, m)

    def map_ea(self) -> torch.Tensor:
        """Expression -> AU map, A x E; each AU's non-neutral share keeps its prior total, neutral stays fixed."""
        prior_t = self.prior.t()
        logits = (torch.log(prior_t + 1e-8) + self.delta_ea).masked_fill(self.neutral[None, :], float("-inf"))
        fixed = (prior_t * self.neutral[None, :]).sum(1, keepdim=True)
        m = torch.softmax(logits, dim=1) * (prior_t.sum(1, keepdim=True) - fixed).clamp(min=0)
        return torch.where(self.neutral[None, :], prior_t, m)

    def mapping(self) -> torch.Tensor:
        return self.map_ae().clamp(EPS, 1 - EPS)

    def transfer(self, t_au: torch.Tensor, t_fe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t_fe2 = F.normalize(t_fe + torch.sigmoid(self.alpha) * (self.map_ae() @ t_au), dim=-1, eps=EPS)
        t_au2 = F.normalize(t_au + torch.sigmoid(self.beta) * (self.map_ea() @ t_fe), dim=-1, eps=EPS)
        return t_au2, t_fe2


class FixedPriorMapping(nn.Module):
    """No DPM (ablation): prototypes pass through unchanged; the output-level prior uses the FACS prior as is."""

    def __init__(self, space: LabelSpace, linked: float = 0.95, unlinked: float = 0.05) -> None:
        super().__init__()
        self.register_buffer("prior", torch.from_numpy(facs_prior(space, off=unlinked)).clamp(max=linked))

    def mapping(self) -> torch.Tensor:
        return self.prior

    def transfer(self, t_au: torch.Tensor, t_fe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t_au, t_fe
