"""MediaPipe BlazeFace (short range) through onnxruntime: boxes, scores and five landmarks.

The ONNX file in models/ was converted once from Google's `.tflite` by
tools/blazeface_to_onnx.py (see models/NOTICE). BlazeFace gives six keypoints:
both eye centres, nose tip, mouth centre and both ear tragions. The mouth
corners the alignment template wants are placed on the mouth line, either side
of the mouth centre, at the template's mouth-width-to-eye-distance ratio; the
similarity fit only needs them consistent, and that keeps the crop stable when
the person smiles (docs/capture.md gives the measured landmark errors).

The model sees the frame letterboxed into a 128x128 square, so it is tuned for
faces that fill a good part of the frame (within ~2 m of a 640x480 camera).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.alignment import TEMPLATE_112
from edge.detection.anchors import ssd_anchor_centres
from edge.detection.faces import Detection
from edge.detection.nms import weighted_nms

INPUT_SIZE = 128
# Half mouth width over eye distance in the alignment template (~0.41).
_HALF_MOUTH_PER_EYE = float(
    (TEMPLATE_112[4, 0] - TEMPLATE_112[3, 0]) / (TEMPLATE_112[1, 0] - TEMPLATE_112[0, 0]) / 2
)


def default_model_path() -> Path:
    return Path(__file__).parent / "models" / "blazeface_short_range.onnx"


@dataclass(frozen=True)
class Letterbox:
    """How a frame was placed in the square network input: input = frame * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float


def letterbox(frame_bgr: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio, centre on a black square, convert to RGB in [-1, 1], NHWC."""
    h, w = frame_bgr.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size, size, 3), np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas[py:py + nh, px:px + nw] = small
    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    return (rgb.astype(np.float32) / 127.5 - 1.0)[None], Letterbox(scale, float(px), float(py))


def five_points(keypoints: np.ndarray) -> np.ndarray:
    """BlazeFace's (6, 2) keypoints -> the template's five points (mouth corners placed on the mouth line)."""
    eye_a, eye_b, nose, mouth = keypoints[0], keypoints[1], keypoints[2], keypoints[3]
    left, right = (eye_a, eye_b) if eye_a[0] <= eye_b[0] else (eye_b, eye_a)
    half = (right - left) * _HALF_MOUTH_PER_EYE
    return np.stack([left, right, nose, mouth - half, mouth + half]).astype(np.float32)


class BlazeFaceDetector:
    """Stateless per call; one onnxruntime session per instance (not shared between threads)."""

    def __init__(self, model_path: Path | None = None, score_threshold: float = 0.5,
                 iou_threshold: float = 0.3, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"face detector model {path} is missing (it ships with the package)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        outputs = {o.name: o for o in self._session.get_outputs()}
        if set(outputs) != {"regressors", "classificators"}:
            raise ValueError(f"{path}: expected outputs regressors/classificators, got {sorted(outputs)}")
        self._anchors = ssd_anchor_centres(INPUT_SIZE) * INPUT_SIZE
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """All faces scoring at least `score_threshold`, in frame pixels, best first."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
        x, box = letterbox(frame_bgr)
        raw_boxes, raw_scores = self._session.run(["regressors", "classificators"], {self._input: x})
        return self._decode(raw_boxes[0], raw_scores[0, :, 0], box)

    def _decode(self, raw: np.ndarray, logits: np.ndarray, lb: Letterbox) -> list[Detection]:
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))
        idx = np.flatnonzero(scores >= self.score_threshold)
        if idx.size == 0:
            return []
        raw, anchors = raw[idx], self._anchors[idx]
        centre = raw[:, :2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        points = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        boxes, kept_scores, points = weighted_nms(boxes, scores[idx], points, self.iou_threshold)
        offset = np.array([lb.pad_x, lb.pad_y], np.float32)
        boxes = (boxes - np.tile(offset, 2)) / lb.scale
        points = (points - offset) / lb.scale
        return [Detection(box=b, score=float(s), landmarks=five_points(p))
                for b, s, p in zip(boxes, kept_scores, points, strict=True)]
