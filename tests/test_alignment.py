"""Alignment of detected faces: the true eye centres (from the .tem files) land on the template's eyes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.alignment import TEMPLATE_112, align_face, similarity_matrix, template_for
from edge.detection import BlazeFaceDetector

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"


def _tem(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    return np.array([[float(v) for v in line.split()[:2]] for line in lines[1:int(lines[0]) + 1]], np.float32)


def test_detected_faces_align_with_true_eyes_on_the_template():
    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not present")
    detector = BlazeFaceDetector()
    size = 112
    template = template_for(size)
    template_iod = float(np.linalg.norm(template[1] - template[0]))
    errors, crops = [], []
    for tem in sorted(LONDON.glob("*_03.tem"))[::5]:
        image = cv2.imread(str(tem.with_suffix(".jpg")))
        (det,) = detector.detect(image)
        matrix = similarity_matrix(det.landmarks, template)
        true_eyes = _tem(tem)[:2]
        mapped = true_eyes @ matrix[:, :2].T + matrix[:, 2]
        errors.append(np.linalg.norm(mapped - template[:2], axis=1) / template_iod)
        crops.append(align_face(image, det.landmarks, template, size))
    errors = np.array(errors)
    print(f"\ntrue eye centres vs template eyes, mean {errors.mean():.3f}, worst {errors.max():.3f} (/ inter-ocular)")
    assert errors.mean() < 0.08 and errors.max() < 0.2
    # the crops are faces at the template's scale: re-detecting on a padded crop finds eyes at the template
    crop = crops[0]
    padded = cv2.copyMakeBorder(crop, 56, 56, 56, 56, cv2.BORDER_REPLICATE)
    (again,) = detector.detect(cv2.resize(padded, (448, 448)))
    eyes = again.landmarks[:2] / 2 - 56
    assert np.linalg.norm(eyes - template[:2], axis=1).max() < 0.15 * template_iod


def test_template_scaling_and_errors():
    assert np.allclose(template_for(224), TEMPLATE_112 * 2)
    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="matching point sets"):
        similarity_matrix(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="degenerate"):
        align_face(image, np.zeros((5, 2), np.float32), TEMPLATE_112, 112)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (1991) by SVD, no reflection: the textbook least-squares similarity, independent of the code."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    u, sv, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rot = u @ d @ vt
    scale = np.trace(np.diag(sv) @ d) / (xs**2).sum(1).mean()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def test_fit_is_the_least_squares_similarity_on_noisy_faces():
    """2,000 noisy five-point faces: the crop matrix equals the closed-form fit, and the residual is minimal."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(2000):
        angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 4.0)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = (TEMPLATE_112 - 56) @ rot.T + rng.uniform(50, 600, 2)
        points += rng.normal(0, 0.05 * scale * 35, points.shape)  # landmark noise, 5% of the eye distance
        got = similarity_matrix(points, TEMPLATE_112).astype(np.float64)
        want = _umeyama(points.astype(np.float64), TEMPLATE_112.astype(np.float64))
        mapped_got = points @ got[:, :2].T + got[:, 2]
        mapped_want = points @ want[:, :2].T + want[:, 2]
        worst = max(worst, float(np.abs(mapped_got - mapped_want).max()))
        # no other similarity does better: a small perturbation of the fit only raises the squared residual
        residual = ((mapped_got - TEMPLATE_112) ** 2).sum()
        nudged = got + rng.normal(0, 1e-3, got.shape) * np.array([[1, 1, 10], [1, 1, 10]])
        nudged[1, :2] = [-nudged[0, 1], nudged[0, 0]]
        assert ((points @ nudged[:, :2].T + nudged[:, 2] - TEMPLATE_112) ** 2).sum() >= residual - 1e-3
    assert worst < 1e-3  # crop pixels
