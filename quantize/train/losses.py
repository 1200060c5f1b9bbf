"""SSM loss terms and running-average loss balancing.

Four terms, as in the paper: expression cross-entropy on the refined logits,
masked AU BCE on the refined probabilities, and the same two on the
prototype-similarity branch alone. Each is divided by a detached running
average of itself (so terms of different scale pull equally), weighted
(1, 2, r, r) / 3 where r ramps the prototype terms in over training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from quantize.ssm.model import SSMOutput

TERMS = ("fe", "au", "fe_proto", "au_proto")
PROB_EPS = 1e-6


def masked_bce(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, logits: bool) -> torch.Tensor:
    """Mean BCE over labelled (row, AU) cells only; 0 when nothing is labelled."""
    mask = mask.to(pred.dtype)
    if logits:
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    else:
        loss = F.binary_cross_entropy(pred.clamp(PROB_EPS, 1 - PROB_EPS), target, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def fe_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled rows; 0 when none is. `target` is B class indices (-1: unlabelled) or
    B x E target distributions (all-zero rows: unlabelled), e.g. crowd votes mixed with a hard label."""
    if target.ndim == 2:
        mass = target.sum(dim=1)
        keep = mass > 0
        if not keep.any():
            return logits.sum() * 0.0
        p = target[keep] / mass[keep, None]
        return -(p * F.log_softmax(logits[keep], dim=-1)).sum(dim=1).mean()
    keep = target >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], target[keep])


def task_losses(fe_out: SSMOutput, fe_target: torch.Tensor, au_out: SSMOutput, au_target: torch.Tensor,
                au_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """`au_target` is B x T x A (per frame) or B x A; `au_mask` B x A (per dataset)."""
    if au_target.ndim == 2:
        au_target = au_target.unsqueeze(1)
    mask = au_mask.unsqueeze(1).expand_as(au_target)
    return {
        "fe": fe_ce(fe_out.fe_logits, fe_target),
        "au": masked_bce(au_out.au_prob, au_target, mask, logits=False),
        "fe_proto": fe_ce(fe_out.fe_proto_logits, fe_target),
        "au_proto": masked_bce(au_out.au_proto_logits, au_target, mask, logits=True),
    }


class LossBalancer(nn.Module):
    """Running averages live in buffers so they are checkpointed and resume exactly."""

    def __init__(self, momentum: float = 0.95, ramp_steps: int = 1000, weights=(1.0, 2.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.momentum, self.ramp_steps = momentum, max(1, ramp_steps)
        self.register_buffer("average", torch.zeros(len(TERMS)))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.weights = weights

    def ramp(self, step: int) -> float:
        """Paper's schedule 2 / (1 + exp(-10 p)) - 1 with p the training progress."""
        return 2.0 / (1.0 + math.exp(-10.0 * step / self.ramp_steps)) - 1.0

    def forward(self, losses: dict[str, torch.Tensor], step: int, reduce=None) -> torch.Tensor:
        """`reduce` averages the detached values across DDP ranks so every rank keeps the same state."""
        values = torch.stack([losses[k].detach() for k in TERMS])
        if reduce is not None:
            values = reduce(values)
        if bool(self.started):
            self.average.mul_(self.momentum).add_((1 - self.momentum) * values)
        else:
            self.average.copy_(values)
            self.started.fill_(True)
        r = self.ramp(step)
        w = (self.weights[0], self.weights[1], r * self.weights[2], r * self.weights[3])
        total = sum(wi * losses[k] / (self.average[i] + 1e-8) for i, (k, wi) in enumerate(zip(TERMS, w, strict=True)))
        return total / 3.0
