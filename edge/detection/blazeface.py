"""MediaPipe BlazeFace through onnxruntime: boxes, scores and five landmarks.

The ONNX files in models/ were converted once from Google's `.tflite` by
tools/blazeface_to_onnx.py (see models/NOTICE). Two models ship:

- short range (128x128 input, anchors at strides 8 and 16): faces at arm's length;
- full range (192x192 input, one anchor per 4x4 cell): trained on faces far from the camera.

Both graphs are fully convolutional with free batch, height and width, so
`BlazeFaceNet` runs them on any input divisible by 32 (a whole resized frame,
or a batch of windows). BlazeFace gives six keypoints: both eye centres, nose
tip, mouth centre and both ear tragions. The mouth corners the alignment
template wants are placed on the mouth line, either side of the mouth centre,
at the template's mouth-width-to-eye-distance ratio; the similarity fit only
needs them consistent, and that keeps the crop stable when the person smiles
(docs/capture.md gives the measured landmark errors).

`BlazeFaceDetector` is the original whole-frame mode: the frame letterboxed into
one square input, good for faces that fill a good part of the frame. The
multi-scale scan for small and many faces is edge/detection/scan.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.alignment import TEMPLATE_112
from edge.detection.anchors import grid_anchors
from edge.detection.faces import Detection
from edge.detection.nms import inside_better, weighted_nms

MODELS = Path(__file__).parent / "models"
# Half mouth width over eye distance in the alignment template (~0.41).
_HALF_MOUTH_PER_EYE = float(
    (TEMPLATE_112[4, 0] - TEMPLATE_112[3, 0]) / (TEMPLATE_112[1, 0] - TEMPLATE_112[0, 0]) / 2
)


@dataclass(frozen=True)
class BlazeFaceModel:
    """One shipped BlazeFace graph: its file, training input size and anchor grids (stride, anchors per cell).

    `face_px`: the face height at the model's input that the multi-scale scan aims for (measured: ~16 px is
    the floor)."""

    name: str
    file: str
    input_size: int
    layers: tuple[tuple[int, int], ...]
    face_px: float = 20.0

    @property
    def path(self) -> Path:
        return MODELS / self.file


SHORT_RANGE = BlazeFaceModel("short_range", "blazeface_short_range.onnx", 128, ((8, 2), (16, 6)))
FULL_RANGE = BlazeFaceModel("full_range", "blazeface_full_range.onnx", 192, ((4, 1),))
MODELS_BY_NAME = {m.name: m for m in (SHORT_RANGE, FULL_RANGE)}
INPUT_SIZE = SHORT_RANGE.input_size


def default_model_path() -> Path:
    return SHORT_RANGE.path


def open_detector_graph(path: Path, threads: int):
    """(session, input name, output names) of a CPU session that sleeps between calls (no spinning): the
    detector runs every few frames."""
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"face detector model {path} is missing (it ships with the package)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name, [o.name for o in session.get_outputs()]


def to_input(images_bgr: list[np.ndarray]) -> np.ndarray:
    """Same-sized BGR uint8 images -> the network's NHWC RGB float32 batch in [-1, 1]."""
    batch = np.stack([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in images_bgr])
    return batch.astype(np.float32) * (1 / 127.5) - 1.0


def five_points(keypoints: np.ndarray) -> np.ndarray:
    """BlazeFace's (N, 6, 2) keypoints -> the template's (N, 5, 2) points (mouth corners placed on the mouth
    line)."""
    eye_a, eye_b, nose, mouth = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2], keypoints[:, 3]
    a_left = (eye_a[:, 0] <= eye_b[:, 0])[:, None]
    left, right = np.where(a_left, eye_a, eye_b), np.where(a_left, eye_b, eye_a)
    half = (right - left) * _HALF_MOUTH_PER_EYE
    return np.stack([left, right, nose, mouth - half, mouth + half], axis=1).astype(np.float32)


@dataclass(frozen=True)
class RawFaces:
    """Candidates of one input image, in that image's pixels, before NMS: boxes xyxy, scores, (N, 5, 2) landmarks
    in LANDMARK_NAMES order (every detector model maps its own keypoints to those five when it decodes)."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    @staticmethod
    def empty() -> RawFaces:
        return RawFaces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))

    def mapped(self, scale: float, offset_x: float, offset_y: float) -> RawFaces:
        """Back to frame pixels: frame = input / scale + offset."""
        off = np.array([offset_x, offset_y], np.float32)
        return RawFaces(self.boxes / scale + np.tile(off, 2), self.scores, self.points / scale + off)

    @staticmethod
    def concat(parts: list[RawFaces]) -> RawFaces:
        parts = [p for p in parts if len(p.scores)]
        if not parts:
            return RawFaces.empty()
        return RawFaces(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                        np.concatenate([p.points for p in parts]))


def merge(raw: RawFaces, iou_threshold: float) -> list[Detection]:
    """Weighted NMS over candidates already in frame pixels, then no box mostly inside a better one ->
    detections, best first."""
    if not len(raw.scores):
        return []
    boxes, scores, points = weighted_nms(raw.boxes, raw.scores, raw.points, iou_threshold)
    keep = inside_better(boxes, scores)
    return [Detection(box=b, score=float(s), landmarks=p)
            for b, s, p in zip(boxes[keep], scores[keep], points[keep], strict=True)]


class BlazeFaceNet:
    """One onnxruntime session on a BlazeFace graph; decodes raw outputs of any input size. Not thread-safe."""

    def __init__(self, model: BlazeFaceModel = SHORT_RANGE, score_threshold: float = 0.5, threads: int = 1,
                 model_path: Path | None = None) -> None:
        path = Path(model_path) if model_path is not None else model.path
        self.model, self.score_threshold = model, score_threshold
        self._session, self._input, outputs = open_detector_graph(path, threads)
        if len(outputs) != 2:
            raise ValueError(f"{path}: expected two outputs (regressors, classificators), got {outputs}")
        self._outputs = sorted(outputs, key=lambda n: "class" in n)  # regressors first
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def prepare(images_bgr: list[np.ndarray]) -> np.ndarray:
        return to_input(images_bgr)

    def run(self, batch: np.ndarray) -> list[RawFaces]:
        """NHWC float32 batch (H, W divisible by 32) -> candidates per image, in that input's pixels."""
        n, h, w, _ = batch.shape
        if h % 32 or w % 32:
            raise ValueError(f"input {h}x{w} is not divisible by 32")
        raw_boxes, logits = self._session.run(self._outputs, {self._input: batch})
        anchors = self._anchors.get((h, w))
        if anchors is None:
            anchors = self._anchors[(h, w)] = grid_anchors(h, w, self.model.layers)
        return [self._decode(raw_boxes[i], logits[i, :, 0], anchors) for i in range(n)]

    def _decode(self, raw: np.ndarray, logits: np.ndarray, anchors: np.ndarray) -> RawFaces:
        keep = np.flatnonzero(logits >= _logit(self.score_threshold))
        if keep.size == 0:
            return RawFaces.empty()
        raw, anchors = raw[keep], anchors[keep]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep], -80.0, 80.0)))
        centre = raw[:, :2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        points = five_points(raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :])
        return RawFaces(boxes.astype(np.float32), scores.astype(np.float32), points)


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


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
    return to_input([canvas]), Letterbox(scale, float(px), float(py))


def check_frame(frame_bgr: np.ndarray) -> None:
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")


class BlazeFaceDetector:
    """Whole frame letterboxed into the model's square input: one call, large faces only."""

    def __init__(self, model_path: Path | None = None, score_threshold: float = 0.5,
                 iou_threshold: float = 0.3, threads: int = 1, model: BlazeFaceModel = SHORT_RANGE) -> None:
        self.net = BlazeFaceNet(model, score_threshold, threads, model_path)
        self.iou_threshold = iou_threshold

    @property
    def score_threshold(self) -> float:
        return self.net.score_threshold

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """All faces scoring at least `score_threshold`, in frame pixels, best first."""
        check_frame(frame_bgr)
        x, lb = letterbox(frame_bgr, self.net.model.input_size)
        (raw,) = self.net.run(x)
        return merge(raw.mapped(lb.scale, -lb.pad_x / lb.scale, -lb.pad_y / lb.scale), self.iou_threshold)

    def run(self, frame_bgr: np.ndarray, around: list[np.ndarray] | tuple = ()) -> list[Detection]:
        """A detector run of a live stream: the whole frame each time (track boxes are not needed)."""
        return self.detect(frame_bgr)
