"""Greedy IoU tracker with a constant-velocity carry between detector runs.

A detection continues a track when it overlaps the track's predicted box by
`iou_threshold`, or, failing that, when its centre lies within `max_jump` face
heights of the predicted centre at a similar size: a small face moving fast
between detector runs (65 px, 12 px per frame, k = 3) overlaps its last box by
less than 0.3 IoU, and a new id for a known person would restart its smoothing.
Pairs are taken best first (overlap before distance), so crossing faces keep
the track whose prediction they fit.

The detector runs every k-th frame; on the frames between, each track's box and
landmarks are moved by its last per-frame velocity so alignment keeps following
a moving face. A track that finds no detection for more than `max_missed`
detector runs ends, and its id is reported once in `TrackUpdate.ended` so the
head can free the track's smoothing slot. Ids are never reused within a tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.detection.faces import Detection
from edge.detection.nms import iou_one_to_many


@dataclass
class Track:
    id: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    age: int = 1  # detector runs this track was matched on
    missed: int = 0  # consecutive detector runs without a match
    frames_since_detection: int = 0
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # px per frame

    @property
    def detected_now(self) -> bool:
        return self.frames_since_detection == 0


@dataclass(frozen=True)
class TrackUpdate:
    tracks: list[Track]  # live tracks, largest box first
    started: list[int]
    ended: list[int]


def _centre_and_height(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (boxes[:, :2] + boxes[:, 2:]) / 2, np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)


class IoUTracker:
    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, max_jump: float = 0.8,
                 start_score: float = 0.0) -> None:
        """`start_score`: the score a detection needs to start a track; any detection the caller passes
        continues one (hysteresis: a face whose score dips on a blurred frame keeps its id and smoothing)."""
        if not 0 < iou_threshold < 1:
            raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.max_jump = max_jump
        self.start_score = start_score
        self._tracks: list[Track] = []
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks)

    def predict(self) -> TrackUpdate:
        """A frame without detector output: carry every track along its velocity."""
        for t in self._tracks:
            t.frames_since_detection += 1
            shift = t.velocity
            t.box = t.box + np.tile(shift, 2)
            t.landmarks = t.landmarks + shift
        return TrackUpdate(self._sorted(), [], [])

    def update(self, detections: list[Detection]) -> TrackUpdate:
        """A frame the detector ran on: match greedily by IoU, start new tracks, end stale ones."""
        started: list[int] = []
        ended: list[int] = []
        unmatched = list(range(len(detections)))
        pairs = []
        if self._tracks and detections:
            boxes = np.stack([d.box for d in detections])
            centres, heights = _centre_and_height(boxes)
            for ti, t in enumerate(self._tracks):
                predicted = t.box + np.tile(t.velocity, 2)
                (centre,), (height,) = _centre_and_height(predicted[None])
                jumps = np.linalg.norm(centres - centre, axis=1) / height
                similar = (heights > height / 1.5) & (heights < height * 1.5)
                for di, v in enumerate(iou_one_to_many(predicted, boxes)):
                    if v >= self.iou_threshold:
                        pairs.append((1.0 + float(v), ti, di))  # any overlap match ranks before a distance match
                    elif similar[di] and jumps[di] < self.max_jump:
                        pairs.append((1.0 - float(jumps[di]) / self.max_jump, ti, di))
        pairs.sort(reverse=True)
        used_t: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_t or di not in unmatched:
                continue
            used_t.add(ti)
            unmatched.remove(di)
            t, d = self._tracks[ti], detections[di]
            steps = t.frames_since_detection + 1
            centre_old = (t.box[:2] + t.box[2:]) / 2 - t.velocity * t.frames_since_detection
            centre_new = (d.box[:2] + d.box[2:]) / 2
            t.velocity = ((centre_new - centre_old) / steps).astype(np.float32)
            t.box, t.landmarks, t.score = d.box.copy(), d.landmarks.copy(), d.score
            t.age += 1
            t.missed = 0
            t.frames_since_detection = 0
        survivors = []
        for ti, t in enumerate(self._tracks):
            if ti not in used_t:
                t.missed += 1
                t.frames_since_detection += 1
                t.box = t.box + np.tile(t.velocity, 2)
                t.landmarks = t.landmarks + t.velocity
                if t.missed > self.max_missed:
                    ended.append(t.id)
                    continue
            survivors.append(t)
        for di in unmatched:
            d = detections[di]
            if d.score < self.start_score:
                continue
            survivors.append(Track(id=self._next_id, box=d.box.copy(), landmarks=d.landmarks.copy(), score=d.score))
            started.append(self._next_id)
            self._next_id += 1
        self._tracks = survivors
        return TrackUpdate(self._sorted(), started, ended)

    def reset(self) -> list[int]:
        """Drop every track (e.g. after a camera reconnect); returns the ended ids."""
        ended = [t.id for t in self._tracks]
        self._tracks = []
        return ended

    def _sorted(self) -> list[Track]:
        return sorted(self._tracks, key=lambda t: float((t.box[2] - t.box[0]) * (t.box[3] - t.box[1])), reverse=True)
