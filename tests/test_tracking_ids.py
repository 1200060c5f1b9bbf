"""Track ids over a generated video of two real faces moving across a 640x480 frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture import open_source
from edge.config.models import DetectionConfig, SourceConfig
from edge.detection import BlazeFaceDetector, Detection
from edge.tracking import FaceFrontEnd, IoUTracker

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"
FRAMES = 60
B_LEAVES = 36  # face B is not drawn from this frame on


def _write_video(path: Path) -> None:
    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not present")
    a = cv2.resize(cv2.imread(str(LONDON / "003_03.jpg"))[100:600, 90:590], (200, 200))
    b = cv2.resize(cv2.imread(str(LONDON / "010_08.jpg"))[100:600, 90:590], (180, 180))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for i in range(FRAMES):
        frame = np.full((480, 640, 3), 210, np.uint8)
        ax, ay = 20 + 3 * i, 40 + round(20 * np.sin(i / 8))  # drifts right, bobs
        frame[ay:ay + 200, ax:ax + 200] = a
        if i < B_LEAVES:
            bx, by = 440 - 2 * i, 280
            frame[by:by + 180, bx:bx + 180] = b
        writer.write(frame)
    writer.release()


def test_ids_are_stable_per_person_and_departures_are_reported(tmp_path):
    video = tmp_path / "two_faces.avi"
    _write_video(video)
    source = open_source(SourceConfig(uri=str(video)))
    config = DetectionConfig(detector="whole_frame", every_k_frames=3, track_max_missed=2, min_face_px=48)
    front = FaceFrontEnd(BlazeFaceDetector(), config)  # the detector that config names
    source.open()
    per_frame, ended_at = [], {}
    while (frame := source.read()) is not None:
        result = front.process(frame.image)
        per_frame.append({f.track_id: (f.box[0] + f.box[2]) / 2 for f in result.faces})
        for tid in result.ended:
            ended_at[tid] = frame.index
        for face in result.faces:
            assert face.crop.shape == (112, 112, 3)
    source.close()
    assert len(per_frame) == FRAMES
    # person A (left, moving right) and person B (right, moving left) each keep one id the whole time
    ids_a = {min(ids, key=ids.get) for ids in per_frame[:B_LEAVES] if len(ids) == 2}
    ids_b = {max(ids, key=ids.get) for ids in per_frame[:B_LEAVES] if len(ids) == 2}
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    assert sum(len(ids) == 2 for ids in per_frame[:B_LEAVES]) == B_LEAVES
    (id_a,), (id_b,) = ids_a, ids_b
    assert all(set(ids) == {id_a} for ids in per_frame[B_LEAVES + 3:])
    # B vanished at frame 36; its track ends after missing max_missed + 1 detector runs (frames 36, 39, 42)
    assert ended_at == {id_b: 42}
    # carried positions follow the motion between detector runs: A's centre increases ~3 px per frame
    xs = [ids[id_a] for ids in per_frame]
    steps = np.diff(xs)
    assert np.median(steps) == pytest.approx(3.0, abs=1.0) and (steps > -2).all()


def _det(x: float) -> Detection:
    lm = np.array([[x + 30, 40], [x + 70, 40], [x + 50, 60], [x + 35, 80], [x + 65, 80]], np.float32)
    return Detection(np.array([x, 0, x + 100, 100], np.float32), 0.9, lm)


def test_tracker_unit_behaviour():
    tracker = IoUTracker(iou_threshold=0.3, max_missed=1)
    first = tracker.update([_det(0), _det(300)])
    assert first.started == [1, 2] and first.ended == []
    second = tracker.update([_det(310), _det(10)])  # order swapped: matching is by overlap
    assert {t.id: float(t.box[0]) for t in second.tracks} == {1: 10.0, 2: 310.0}
    carried = tracker.predict()  # velocity 10 px per frame carries both
    assert {t.id: float(t.box[0]) for t in carried.tracks} == {1: 20.0, 2: 320.0}
    third = tracker.update([_det(30)])
    assert third.ended == [] and {t.id for t in third.tracks} == {1, 2}
    fourth = tracker.update([_det(40)])
    assert fourth.ended == [2] and [t.id for t in fourth.tracks] == [1]
    fifth = tracker.update([_det(40), _det(500)])
    assert fifth.started == [3]  # ids are never reused
    assert sorted(tracker.reset()) == [1, 3] and tracker.tracks == []
    with pytest.raises(ValueError):
        IoUTracker(iou_threshold=1.5)


def test_a_track_starts_on_a_high_score_and_continues_on_a_lower_one():
    """Hysteresis: a face must score start_score to start a track; its dips below that keep the same id."""
    from dataclasses import replace

    tracker = IoUTracker(iou_threshold=0.3, max_missed=1, start_score=0.9)
    low = replace(_det(0), score=0.6)
    assert tracker.update([low]).started == [] and tracker.tracks == []  # too unsure to start
    assert tracker.update([_det(0)]).started == [1]
    kept = tracker.update([replace(_det(5), score=0.6)])  # a blurred frame: same person, lower score
    assert kept.started == [] and [(t.id, t.missed) for t in kept.tracks] == [(1, 0)]
    assert tracker.update([replace(_det(400), score=0.6)]).started == []  # and no stranger starts on it


def test_the_front_end_starts_tracks_at_the_configured_score():
    """A config's score_threshold is the start score; the gate passes lower scores on for continuing tracks."""
    from edge.tracking.frontend import KEEP_SCORE

    front = FaceFrontEnd(BlazeFaceDetector(), DetectionConfig(detector="whole_frame", score_threshold=0.8))
    assert front.tracker.start_score == 0.8 and front.gate.score_threshold == KEEP_SCORE == 0.5
    assert DetectionConfig().score_threshold == 0.9 and DetectionConfig(detector="full_range").score_threshold == 0.5
