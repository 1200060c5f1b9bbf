"""Run a teacher over arrays and turn its outputs into metrics (quantize.metrics)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantize.metrics import AUReport, FEReport, au_report, calibrate_thresholds, fe_report
from quantize.ssm.model import SSMTeacher
from quantize.train.tensors import FaceArrays, make_batch


@dataclass
class Predictions:
    fe_prob: np.ndarray  # N x E
    fe: np.ndarray  # N
    au_prob: np.ndarray  # (N*T) x A, per frame
    au: np.ndarray  # (N*T) x A
    au_mask: np.ndarray  # (N*T) x A


@torch.no_grad()
def predict(model: SSMTeacher, data: FaceArrays, batch: int = 128) -> Predictions:
    was_training = model.training
    model.eval()
    fe_prob, au_prob = [], []
    try:
        protos = model.prototypes()
        for start in range(0, len(data), batch):
            b = make_batch(data, torch.arange(start, min(start + batch, len(data))), gen=None)
            f, g = model.features(b["image"])
            out = model._heads(f, g, protos)
            fe_prob.append(out.fe_logits.softmax(-1).numpy())
            au_prob.append(out.au_prob.reshape(-1, out.au_prob.shape[-1]).numpy())
    finally:
        model.train(was_training)
    frames = data.au.reshape(-1, data.au.shape[-1])
    per_row = frames.shape[0] // len(data)
    return Predictions(np.concatenate(fe_prob), data.fe, np.concatenate(au_prob), frames,
                       np.repeat(data.au_mask, per_row, axis=0))


def reports(pred: Predictions, thresholds: np.ndarray, model: SSMTeacher) -> tuple[AUReport | None, FEReport | None]:
    cfg = model.cfg
    au = au_report(pred.au_prob, pred.au, pred.au_mask, thresholds, cfg.labels.au_keys) if pred.au_mask.any() else None
    fe = fe_report(pred.fe_prob, pred.fe, list(cfg.expressions)) if (pred.fe >= 0).any() else None
    return au, fe


def calibrate(pred: Predictions) -> np.ndarray:
    """Thresholds from validation predictions only."""
    return calibrate_thresholds(pred.au_prob, pred.au, pred.au_mask)
