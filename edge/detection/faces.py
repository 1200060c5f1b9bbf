"""What a detector reports per face, and the gate that decides which faces go on to the model."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Landmark order everywhere in the pipeline (matches edge.alignment.TEMPLATE_112):
# image-left eye centre, image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Detection:
    """One face in frame pixels. `box` is x1, y1, x2, y2; `landmarks` is 5x2 in LANDMARK_NAMES order."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def inter_ocular(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


@dataclass
class GateStats:
    """Why faces were turned away, counted (reported in the daemon's stats)."""

    passed: int = 0
    rejected: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class FaceGate:
    """Minimum size, confidence and landmark sanity; then at most `max_faces`, largest first.

    The sanity checks catch detections whose landmarks would produce a useless
    crop: eyes too close or too far for the box, a face rolled past
    `max_roll_deg`, a mouth not below the eyes, or a box mostly outside the frame.
    """

    min_face_px: int = 48
    max_faces: int = 4
    score_threshold: float = 0.6
    max_roll_deg: float = 45.0
    min_inside: float = 0.6

    def reason(self, det: Detection, frame_shape: tuple[int, ...]) -> str | None:
        if det.score < self.score_threshold:
            return "low_score"
        if det.height < self.min_face_px:
            return "too_small"
        eye_ratio = det.inter_ocular / max(det.width, 1e-6)
        if not 0.15 <= eye_ratio <= 0.8:
            return "bad_landmarks"
        eyes = det.landmarks[1] - det.landmarks[0]
        if abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) > self.max_roll_deg:
            return "rolled"
        eye_mid = det.landmarks[:2].mean(axis=0)
        mouth_mid = det.landmarks[3:].mean(axis=0)
        normal = np.array([-eyes[1], eyes[0]])  # points "down the face" for an upright face
        if float((mouth_mid - eye_mid) @ normal) <= 0:
            return "bad_landmarks"
        h, w = frame_shape[:2]
        x1, y1, x2, y2 = det.box
        inside = max(0.0, min(x2, w) - max(x1, 0)) * max(0.0, min(y2, h) - max(y1, 0))
        if inside < self.min_inside * max(det.area, 1e-6):
            return "outside_frame"
        return None

    def apply(self, detections: list[Detection], frame_shape: tuple[int, ...],
              stats: GateStats | None = None) -> list[Detection]:
        kept = []
        for det in detections:
            why = self.reason(det, frame_shape)
            if why is None:
                kept.append(det)
            elif stats is not None:
                stats.rejected[why] += 1
        kept.sort(key=lambda d: d.area, reverse=True)
        if stats is not None:
            stats.rejected["over_max_faces"] += max(0, len(kept) - self.max_faces)
            stats.passed += min(len(kept), self.max_faces)
        return kept[: self.max_faces]
