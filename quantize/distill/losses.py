"""Distillation losses: hard labels, logit KD, feature KD and FACS prior consistency."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quantize.ssm.head import PROB_CLAMP, HeadOutput
from quantize.train.losses import fe_ce


@dataclass(frozen=True)
class DistillWeights:
    hard: float = 1.0
    kd_fe: float = 1.0
    kd_au: float = 1.0
    feature: float = 0.5
    prior: float = 0.1
    temperature: float = 2.0


def _clamped(p: torch.Tensor) -> torch.Tensor:
    return p.clamp(PROB_CLAMP, 1 - PROB_CLAMP)


def hard_loss(out: HeadOutput, au: torch.Tensor, au_mask: torch.Tensor, fe: torch.Tensor) -> torch.Tensor:
    """Labels: `fe` as class indices or target distributions (`quantize.train.losses.fe_ce`); masked AU BCE."""
    loss = fe_ce(out.fe_logits, fe)
    if au_mask.any():
        bce = F.binary_cross_entropy(_clamped(out.au_prob), au, reduction="none")
        loss = loss + (bce * au_mask).sum() / au_mask.sum()
    return loss


def kd_fe_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student), times T^2 to keep gradient scale (Hinton et al.)."""
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    q = F.softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def kd_au_loss(student_prob: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(_clamped(student_prob), teacher_prob.clamp(0, 1))


def feature_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine: the head normalises features for the prototype branch, so direction matters most."""
    return (1 - F.cosine_similarity(projected, teacher, dim=-1)).mean()


def prior_consistency(out: HeadOutput, mapping: torch.Tensor) -> torch.Tensor:
    """The student's AU probabilities should agree with the AUs its expression implies under FACS."""
    implied = out.fe_prob @ mapping
    return F.mse_loss(out.au_prob, implied)
