"""quantize.metrics against values worked out by hand."""

import json

import numpy as np
import pytest

from quantize.metrics import (
    au_report,
    calibrate_thresholds,
    confusion_matrix,
    f1_score,
    fe_report,
    report_json,
    report_table,
    roc_auc,
)


def test_f1_hand_values():
    # tp=2, fp=1, fn=1 -> 2*2 / (3 + 3) = 2/3
    assert f1_score([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert f1_score([0, 0], [0, 0]) == 0.0


def test_auc_with_ties():
    # pos scores {0.8, 0.4}, neg {0.4, 0.1}: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1 -> 3.5/4
    assert roc_auc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.875)
    assert roc_auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 1])) == pytest.approx(0.5)
    assert roc_auc(np.array([0.1, 0.9]), np.array([1, 0])) == pytest.approx(0.0)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_calibration_picks_best_f1_threshold_and_default_without_positives():
    scores = np.array([[0.9, 0.3], [0.6, 0.2], [0.4, 0.1], [0.2, 0.8]])
    labels = np.array([[1, 0], [1, 0], [0, 0], [1, 0]])
    thr = calibrate_thresholds(scores, labels, default=0.5)
    # AU0: cut at 0.9 -> F1 2/4, 0.6 -> 4/5, 0.4 -> 4/6, 0.2 -> 6/7 (best).
    assert thr[0] == pytest.approx(0.2)
    assert thr[1] == pytest.approx(0.5)


def test_au_report_masks_and_chance():
    scores = np.array([[0.9, 0.1], [0.2, 0.7], [0.8, 0.6], [0.1, 0.9]])
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    mask = np.array([[1, 1], [1, 1], [1, 0], [1, 0]], bool)
    rep = au_report(scores, labels, mask, np.array([0.5, 0.5]), ["AU1", "AU2"])
    assert rep.f1 == [pytest.approx(1.0), pytest.approx(1.0)]
    # chance: AU0 all-positive F1 = 2*2/(4+2) = 2/3; AU1 (2 labelled rows, 1 positive) = 2*1/(2+1) = 2/3
    assert rep.chance_f1 == pytest.approx(2 / 3)
    rep2 = au_report(scores, labels, np.zeros_like(mask), np.array([0.5, 0.5]), ["AU1", "AU2"])
    assert rep2.f1 == [None, None]


def test_fe_report_accuracy_uar_confusion():
    probs = np.eye(3)[[0, 0, 1, 2, 2, 2]]
    labels = np.array([0, 1, 1, 2, 2, -1])
    rep = fe_report(probs, labels, ["a", "b", "c"])
    assert rep.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert rep.accuracy == pytest.approx(4 / 5)
    assert rep.uar == pytest.approx((1 + 0.5 + 1) / 3)
    assert rep.chance_accuracy == pytest.approx(2 / 5)
    assert rep.n == 5
    text = report_table(None, rep)
    assert "UAR 0.833" in text
    assert json.loads(report_json(None, rep))["fe"]["accuracy"] == pytest.approx(0.8)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="confusion_matrix"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="au_report"):
        au_report(np.zeros((2, 2)), np.zeros((2, 3)), None, np.zeros(2), ["a", "b"])
