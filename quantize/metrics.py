"""Evaluation metrics for AUs and expressions, pure NumPy.

AU thresholds are calibrated on a validation split and then applied unchanged
to the split being reported; the public SSM evaluation tunes them on the test
fold, which inflates F1. Nothing here looks at a test split to pick anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np


def _check_binary(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, where: str) -> tuple:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"{where}: scores {scores.shape} and labels {labels.shape} must both be N x A")
    mask = np.ones(labels.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != labels.shape:
        raise ValueError(f"{where}: mask {mask.shape} does not match labels {labels.shape}")
    return scores, labels >= 0.5, mask


def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Binary F1; 0 when there is neither a true nor a predicted positive."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = float(np.sum(pred & truth))
    denom = float(np.sum(pred) + np.sum(truth))
    return 0.0 if denom == 0 else 2.0 * tp / denom


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic with average ranks for ties; NaN if one class is absent."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank over each run of equal scores (1-based ranks).
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for s, c in zip(start, counts, strict=True):
        ranks[order[s : s + c]] = s + (c + 1) / 2.0
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def calibrate_thresholds(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, default: float = 0.5
) -> np.ndarray:
    """Per-AU threshold maximising F1 on (validation) data; `default` where an AU has no positive there."""
    scores, truth, mask = _check_binary(scores, labels, mask, "calibrate_thresholds")
    out = np.full(scores.shape[1], default, dtype=np.float32)
    for a in range(scores.shape[1]):
        s, t = scores[mask[:, a], a], truth[mask[:, a], a]
        if t.sum() == 0:
            continue
        order = np.argsort(-s, kind="mergesort")
        s_desc, cum_tp = s[order], np.cumsum(t[order])
        # Predicting "s >= s_desc[i]" selects rows 0..i; only the last row of a tie group is a valid cut.
        last = np.r_[s_desc[1:] != s_desc[:-1], True]
        idx = np.flatnonzero(last)
        f1 = 2.0 * cum_tp[idx] / (idx + 1 + t.sum())
        best = np.flatnonzero(f1 == f1.max())
        out[a] = s_desc[idx[best[np.argmin(np.abs(s_desc[idx[best]] - default))]]]
    return out


@dataclass
class AUReport:
    keys: list[str]
    f1: list[float | None]  # None where the AU is not labelled in the data
    auc: list[float | None]
    thresholds: list[float]
    macro_f1: float
    macro_auc: float
    chance_f1: float  # macro F1 of predicting every labelled AU active


@dataclass
class FEReport:
    classes: list[str]
    accuracy: float
    uar: float  # unweighted average recall over classes present in the labels
    confusion: list[list[int]]  # rows: truth, columns: prediction
    chance_accuracy: float  # share of the majority class
    n: int


def au_report(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, thresholds: np.ndarray, keys: list[str]
) -> AUReport:
    scores, truth, mask = _check_binary(scores, labels, mask, "au_report")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (scores.shape[1],) or len(keys) != scores.shape[1]:
        raise ValueError(f"au_report: need {scores.shape[1]} thresholds and keys, got {thresholds.shape}, {len(keys)}")
    f1s: list[float | None] = []
    aucs: list[float | None] = []
    chance: list[float] = []
    for a in range(scores.shape[1]):
        m = mask[:, a]
        if not m.any():
            f1s.append(None)
            aucs.append(None)
            continue
        s, t = scores[m, a], truth[m, a]
        f1s.append(f1_score(s >= thresholds[a], t))
        auc = roc_auc(s, t)
        aucs.append(None if np.isnan(auc) else auc)
        chance.append(f1_score(np.ones_like(t), t))
    valid_f1 = [v for v in f1s if v is not None]
    valid_auc = [v for v in aucs if v is not None]
    return AUReport(
        keys=list(keys),
        f1=f1s,
        auc=aucs,
        thresholds=[float(t) for t in thresholds],
        macro_f1=float(np.mean(valid_f1)) if valid_f1 else float("nan"),
        macro_auc=float(np.mean(valid_auc)) if valid_auc else float("nan"),
        chance_f1=float(np.mean(chance)) if chance else float("nan"),
    )


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    if truth.shape != pred.shape:
        raise ValueError(f"confusion_matrix: truth {truth.shape} and pred {pred.shape} differ")
    bad = (truth < 0) | (truth >= n_classes) | (pred < 0) | (pred >= n_classes)
    if bad.any():
        raise ValueError(f"confusion_matrix: labels outside 0..{n_classes - 1} at rows {np.flatnonzero(bad)[:5]}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (truth, pred), 1)
    return cm


def fe_report(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> FEReport:
    """Accuracy, UAR and confusion over rows with a label (label -1 = unlabelled, skipped)."""
    probs, labels = np.asarray(probs), np.asarray(labels, np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[1] != len(classes):
        raise ValueError(f"fe_report: probs {probs.shape}, labels {labels.shape}, {len(classes)} classes disagree")
    keep = labels >= 0
    truth, pred = labels[keep], probs[keep].argmax(axis=1)
    cm = confusion_matrix(truth, pred, len(classes))
    support = cm.sum(axis=1)
    recalls = np.diag(cm)[support > 0] / support[support > 0]
    n = int(keep.sum())
    return FEReport(
        classes=list(classes),
        accuracy=float(np.trace(cm) / n) if n else float("nan"),
        uar=float(recalls.mean()) if len(recalls) else float("nan"),
        confusion=cm.tolist(),
        chance_accuracy=float(support.max() / n) if n else float("nan"),
        n=n,
    )


def report_json(au: AUReport | None, fe: FEReport | None, **extra: object) -> str:
    return json.dumps({"au": asdict(au) if au else None, "fe": asdict(fe) if fe else None, **extra}, indent=2)


def report_table(au: AUReport | None, fe: FEReport | None) -> str:
    """Plain-text table for terminals and logs."""
    lines: list[str] = []
    if au is not None:
        lines.append(f"{'AU':<7}{'F1':>7}{'AUC':>7}{'thr':>7}")
        for k, f, a, t in zip(au.keys, au.f1, au.auc, au.thresholds, strict=True):
            fs = f"{f:7.3f}" if f is not None else f"{'-':>7}"
            as_ = f"{a:7.3f}" if a is not None else f"{'-':>7}"
            lines.append(f"{k:<7}{fs}{as_}{t:7.3f}")
        lines.append(f"macro AU-F1 {au.macro_f1:.3f} (all-positive chance {au.chance_f1:.3f}), "
                     f"macro AUC {au.macro_auc:.3f}")
    if fe is not None:
        lines.append(f"FE accuracy {fe.accuracy:.3f} (majority chance {fe.chance_accuracy:.3f}, "
                     f"uniform {1 / len(fe.classes):.3f}), UAR {fe.uar:.3f}, n={fe.n}")
        width = max(len(c) for c in fe.classes) + 1
        lines.append(" " * width + "".join(f"{c[:5]:>6}" for c in fe.classes))
        for c, row in zip(fe.classes, fe.confusion, strict=True):
            lines.append(f"{c:<{width}}" + "".join(f"{v:6d}" for v in row))
    return "\n".join(lines)
