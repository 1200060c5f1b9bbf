"""Front end vs model runtime on real photos: what a swap keeps, and what one bad frame or one NaN costs."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from bundle_factory import make_tiny_bundle
from fleet_helpers import variant

from edge.bundle import read_bundle
from edge.config import load_config
from edge.pipeline.daemon import load_processor, load_runtime
from edge.publish.payloads import ExpressionEvents


def still_frames(london, person: str = "004", n: int = 8, x: int = 160, size: int = 320) -> list[np.ndarray]:
    """A real face standing still in a 640x480 frame (the tracker keeps one id)."""
    face = cv2.resize(cv2.imread(str(london / f"{person}_03.jpg")), (size, size))
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[80 : 80 + size, x : x + size] = face
    return [frame.copy() for _ in range(n)]


def config_for(bundle, *extra: str):
    return load_config(None, [f'model.bundle="{bundle}"', 'model.backend="onnxruntime"', "model.threads=1",
                              "detection.every_k_frames=1", "detection.scan_slices=1", *extra])


@pytest.fixture(scope="module")
def newer(tmp_path_factory, tiny_bundle):
    """Same label space, other weights: what a fleet update usually is."""
    return make_tiny_bundle(tmp_path_factory.mktemp("newer") / "b2", build=2, version="0.0.2", seed=5)


def run(processor, frames, start: int = 0):
    return [processor.process(f, start + i) for i, f in enumerate(frames)]


def track_ids(results) -> list[int]:
    return [face.track_id for r in results for face in r.record.faces]


def test_a_swap_with_the_same_label_space_keeps_track_ids_and_smoothing(tiny_bundle, newer, london_dir, caplog):
    cfg = config_for(tiny_bundle, 'head.smoothing="window"', "head.window=4")
    processor = load_processor(cfg, read_bundle(tiny_bundle))
    frames = still_frames(london_dir)
    before = run(processor, frames[:5])
    (tid,) = set(track_ids(before))
    slot = processor.front.slots.active[tid]
    fill, head = processor.head.state()[1][slot]
    assert (fill, head) == (4, 1)  # five frames through a window of four
    caplog.set_level(logging.INFO)
    outcome = processor.swap(load_runtime(cfg, read_bundle(newer)), cfg)
    assert (outcome.tracks, outcome.smoothing) == ("kept", "carried")
    assert "kept 1 tracks and their smoothing (same label space and smoothing layout)" in caplog.text
    after = run(processor, frames[5:7], 5)
    assert set(track_ids(after)) == {tid} and processor.front.slots.active[tid] == slot
    assert [r.record.bundle.build for r in after] == [2, 2]
    assert processor.head.state()[1][slot].tolist() == [4, 3]  # the ring went on, it did not restart at 1


def test_a_new_smoothing_layout_keeps_tracks_and_restarts_their_smoothing(tiny_bundle, newer, london_dir, caplog):
    cfg = config_for(tiny_bundle, "detection.max_faces=2", "head.max_tracks=4")
    processor = load_processor(cfg, read_bundle(tiny_bundle))
    for i, person in enumerate(("001", "004", "010")):  # three people in turn, apart: the last one holds slot 2
        results = run(processor, still_frames(london_dir, person, 1, x=10 + 210 * i, size=200), i)
    (tid,) = set(track_ids(results))
    assert processor.front.slots.active[tid] == 2
    caplog.set_level(logging.INFO)
    smaller = config_for(tiny_bundle, "detection.max_faces=2", "head.max_tracks=2", 'head.smoothing="window"',
                         "head.window=3")
    outcome = processor.swap(load_runtime(smaller, read_bundle(newer)), smaller)
    assert (outcome.tracks, outcome.smoothing) == ("kept", "restarted") and "smoothing layout changed" in caplog.text
    after = run(processor, still_frames(london_dir, "010", 2, x=430, size=200), 3)
    assert set(track_ids(after)) == {tid}  # the person keeps their id...
    slot = processor.front.slots.active[tid]
    assert slot < 2 and processor.head.state()[1][slot].tolist() == [2, 2]  # ...in a slot of the new table


def test_a_swap_to_another_label_space_resets_tracks_on_purpose(tiny_bundle, london_dir, tmp_path, caplog):
    labels = read_bundle(tiny_bundle).manifest.labels
    reordered = variant(tiny_bundle, tmp_path / "reordered", build=3,
                        labels={"aus": labels.aus, "expressions": labels.expressions[::-1]})
    cfg = config_for(tiny_bundle)
    processor = load_processor(cfg, read_bundle(tiny_bundle))
    frames = still_frames(london_dir)
    (tid,) = set(track_ids(run(processor, frames[:3])))
    caplog.set_level(logging.INFO)
    outcome = processor.swap(load_runtime(cfg, read_bundle(reordered)), cfg)
    assert outcome.tracks == "reset" and "reset 1 tracks and their smoothing: the label space changed" in caplog.text
    (new_tid,) = set(track_ids(run(processor, frames[3:5], 3)))
    assert new_tid != tid  # an id that meant "happiness at index 1" must not continue as another expression


def test_a_frame_that_raises_costs_that_frame_and_its_new_tracks_start_clean(tiny_bundle, london_dir, monkeypatch):
    cfg = config_for(tiny_bundle, 'head.smoothing="window"', "head.window=4", "detection.track_max_missed=0")
    processor = load_processor(cfg, read_bundle(tiny_bundle))
    run(processor, still_frames(london_dir, "004", 3))  # person A fills slot 0 with three frames
    empty = np.full((480, 640, 3), 90, np.uint8)
    processor.process(empty, 3)  # A leaves: slot 0 is free, its old state stays on the "device"
    person_b = still_frames(london_dir, "010", 2)
    step = processor.runtime.step
    real = step.run
    monkeypatch.setattr(step, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("backend hiccup")))
    with pytest.raises(RuntimeError, match="backend hiccup"):
        processor.process(person_b[0], 4)  # B's first frame never reached the head...
    monkeypatch.setattr(step, "run", real)
    (face,) = processor.process(person_b[1], 5).record.faces
    slot = processor.front.slots.active[face.track_id]
    assert slot == 0
    assert processor.head.state()[1][slot].tolist() == [1, 1]  # ...so B starts fresh, not as A's fourth frame


def test_a_nan_from_the_backend_costs_one_frame_for_that_face(tiny_bundle, london_dir):
    cfg = config_for(tiny_bundle, "head.ema_alpha=0.5")
    processor = load_processor(cfg, read_bundle(tiny_bundle))
    frames = still_frames(london_dir)
    run(processor, frames[:3])
    backend = processor.backend
    real = backend.infer

    def broken(images):
        features = real(images)
        features.f[0, 0] = np.nan
        return features

    (tid,) = processor.front.slots.active
    state_before = processor.head.state()[0].copy()
    backend.infer = broken
    nan_frame = processor.process(frames[3], 3)
    backend.infer = real
    assert nan_frame.invalid == 1 and nan_frame.record.faces == []  # dropped from that record only
    assert nan_frame.held == (tid,)  # the face is still in view
    np.testing.assert_array_equal(processor.head.state()[0], state_before)  # and never entered the smoothing
    later = processor.process(frames[4], 4)
    assert [f.track_id for f in later.record.faces] == [tid] and later.invalid == 0
    # dashboards see no end / start for the frame without a result: the track is held, not gone
    events = ExpressionEvents("cam")
    events.update(processor.process(frames[0], 5).record)
    assert [e.kind for e in events.update(nan_frame.record, nan_frame.held)] == []
    assert [e.kind for e in events.update(later.record)] in ([], ["update"])
    assert [e.kind for e in events.update(nan_frame.record)] == ["end"]  # without `held` it would end


def test_more_live_tracks_than_slots_costs_smoothing_history_not_the_frame(tiny_bundle, london_dir):
    cfg = config_for(tiny_bundle, "detection.max_faces=2", "head.max_tracks=2", "detection.track_max_missed=50")
    processor = load_processor(cfg, read_bundle(tiny_bundle))
    for i, person in enumerate(("001", "004", "010")):  # three live tracks (missed ones stay), two slots
        result = processor.process(still_frames(london_dir, person, 1, x=10 + 210 * i, size=200)[0], i)
        assert len(result.record.faces) == 1  # every frame ran: no SlotsExhaustedError
    assert len(processor.front.faces.tracker.tracks) == 3 and processor.front.slot_evictions == 1
