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


def kd_fe_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               peer: torch.Tensor | None = None, peer_share: float = 0.0) -> torch.Tensor:
    """Temperature-scaled KL(target || student), times T^2 to keep gradient scale (Hinton et al.).

    The target is the teacher's softened distribution; on rows where `peer` (a second teacher's probabilities,
    NaN rows: none) has an opinion, `peer_share` of it is the peer's, softened by the same temperature.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    q = F.softmax(teacher_logits / temperature, dim=-1)
    if peer is not None and peer_share > 0:
        has = torch.isfinite(peer).all(dim=-1, keepdim=True)
        peer_q = F.softmax(torch.log(torch.nan_to_num(peer, nan=1.0).clamp_min(PROB_CLAMP)) / temperature, dim=-1)
        q = torch.where(has, (1 - peer_share) * q + peer_share * peer_q, q)
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
