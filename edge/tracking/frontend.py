"""Per frame: detect every k-th frame, track in between, gate, and align each face to the crop template.

This is the front half of the daemon's processing loop; it owns no thread and
no source, so the loop (and tests) feed it frames and get back typed faces,
the ids of tracks that ended (to free their smoothing slots) and stage timings.
On detector frames the detector is handed the live tracks' boxes, so the
multi-scale scan re-detects every tracked face in a window around it (cheap)
while it sweeps one slice of the frame for new faces (edge/detection/scan.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edge.alignment import align_face, template_for
from edge.config.models import DetectionConfig
from edge.detection.blazeface import FULL_RANGE, SHORT_RANGE, BlazeFaceDetector
from edge.detection.faces import Detection, FaceGate, GateStats
from edge.detection.retinaface import RETINAFACE
from edge.detection.scan import MultiScaleDetector
from edge.tracking.iou_tracker import IoUTracker

KEEP_SCORE = 0.5  # the score that keeps a started track alive (the scans also run at min(0.5, score_threshold))


class FaceDetector(Protocol):
    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Every face of one image, no state kept (photos, analyze, evaluation)."""
        ...

    def run(self, frame_bgr: np.ndarray, around: list[np.ndarray] | tuple = ()) -> list[Detection]:
        """One detector run on a live stream, told where the live tracks are."""
        ...


def open_detector(config: DetectionConfig, threads: int = 1) -> FaceDetector:
    """The detector `config.detector` names, with the shipped model (offline, inside the package)."""
    if config.detector == "whole_frame":
        return BlazeFaceDetector(score_threshold=min(KEEP_SCORE, config.score_threshold), threads=threads)
    model = {"retinaface": RETINAFACE, "full_range": FULL_RANGE, "short_range": SHORT_RANGE}[config.detector]
    return MultiScaleDetector(model, min_face_px=config.min_face_px, slices=config.scan_slices,
                              score_threshold=min(KEEP_SCORE, config.score_threshold), threads=threads)


@dataclass(frozen=True)
class AlignedFace:
    track_id: int
    box: np.ndarray  # x1, y1, x2, y2 in frame pixels
    landmarks: np.ndarray  # 5x2 frame pixels (LANDMARK_NAMES order)
    score: float  # detector score at the track's last detection
    detected_now: bool  # False: box and landmarks carried by the tracker from an earlier frame
    crop: np.ndarray  # size x size x 3 uint8, same colour order as the frame (BGR)


@dataclass(frozen=True)
class StageTimes:
    detect_ms: float
    track_ms: float
    align_ms: float


@dataclass(frozen=True)
class FrameFaces:
    faces: list[AlignedFace]
    ended: list[int]  # track ids gone for good since the previous frame
    detector_ran: bool
    times: StageTimes


@dataclass
class FaceFrontEnd:
    detector: FaceDetector
    config: DetectionConfig = field(default_factory=DetectionConfig)
    crop_size: int = 112
    template: np.ndarray | None = None  # crop_size pixels; default: TEMPLATE_112 scaled
    gate_stats: GateStats = field(default_factory=GateStats)

    def __post_init__(self) -> None:
        if self.template is None:
            self.template = template_for(self.crop_size)
        if self.template.shape != (5, 2):
            raise ValueError(f"alignment template must be 5x2, got {self.template.shape}")
        # Hysteresis (docs/capture.md): a face must score `score_threshold` to start a track, and keeps it on
        # detections down to KEEP_SCORE, so a blurred or turning frame does not end a person's id.
        self.gate = FaceGate(min_face_px=self.config.min_face_px, max_faces=self.config.max_faces,
                             score_threshold=min(KEEP_SCORE, self.config.score_threshold))
        self.tracker = IoUTracker(self.config.track_iou, self.config.track_max_missed,
                                  start_score=self.config.score_threshold)
        self._count = 0

    @classmethod
    def from_config(cls, config: DetectionConfig, crop_size: int = 112, template: np.ndarray | None = None,
                    threads: int = 1) -> FaceFrontEnd:
        """The configured shipped detector; `crop_size`/`template` come from the bundle's input spec."""
        return cls(open_detector(config, threads), config, crop_size, template)

    def process(self, image: np.ndarray) -> FrameFaces:
        run_detector = self._count % self.config.every_k_frames == 0
        self._count += 1
        t0 = time.perf_counter()
        if run_detector:
            around = [t.box for t in self.tracker.tracks]
            detections = self.gate.apply(self.detector.run(image, around), image.shape, self.gate_stats)
        t1 = time.perf_counter()
        update = self.tracker.update(detections) if run_detector else self.tracker.predict()
        t2 = time.perf_counter()
        faces = [
            AlignedFace(t.id, t.box, t.landmarks, t.score, t.detected_now,
                        align_face(image, t.landmarks, self.template, self.crop_size))
            for t in update.tracks
            if t.missed == 0  # a track not seen on the last detector run is kept alive but not fed to the model
        ][: self.config.max_faces]
        t3 = time.perf_counter()
        return FrameFaces(faces, update.ended, run_detector,
                          StageTimes((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))

    def still_faces(self, image: np.ndarray) -> list[Detection]:
        """The faces one still image gives, each as it would start a track: the gate, then the start score."""
        found = self.gate.apply(self.detector.detect(image), image.shape, self.gate_stats)
        return [d for d in found if d.score >= self.config.score_threshold]

    def reset(self) -> list[int]:
        """Forget all tracks (after a camera reconnect: the scene may have changed); returns ended ids."""
        self._count = 0
        if hasattr(self.detector, "reset"):
            self.detector.reset()
        return self.tracker.reset()
