"""The multi-scale scan (edge/detection/scan.py): real London faces scaled down into large frames, and its plan."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detection.anchors import grid_anchors, ssd_anchor_centres
from edge.detection.blazeface import FULL_RANGE, SHORT_RANGE, BlazeFaceDetector, BlazeFaceNet
from edge.detection.nms import iou_one_to_many
from edge.detection.retinaface import RETINAFACE
from edge.detection.scan import MultiScaleDetector, scan_plan, split_slices

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"
# BlazeFace box height over the height of the central 475 px of a London photo (0.35-0.41 of the whole 675 px)
BOX_PER_CROP = 0.52


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not present")
    paths = sorted(LONDON.glob("*.jpg"))
    return [cv2.imread(str(p))[100:575, 100:575] for p in paths[::5]]  # 28 photos, neutral and smiling, cropped


@pytest.fixture(scope="module", params=[FULL_RANGE, RETINAFACE], ids=lambda m: m.name)
def full(request) -> MultiScaleDetector:
    """The scan with each shipped scan model (BlazeFace full range, RetinaFace)."""
    return MultiScaleDetector(request.param, min_face_px=24, score_threshold=0.5)


def paste_faces(photos: list[np.ndarray], width: int, height: int, face_heights: list[float],
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photos scaled so their faces have the given heights, on a grid with jitter; returns frame and photo boxes."""
    rng = np.random.default_rng(seed)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = rng.integers(70, 170, 3).astype(np.uint8)
    cols = int(np.ceil(np.sqrt(len(face_heights) * width / height)))
    rows = int(np.ceil(len(face_heights) / cols))
    cell_w, cell_h = width // cols, height // rows
    boxes = []
    for i, face_h in enumerate(face_heights):
        photo = photos[i % len(photos)]
        side = min(cell_w, cell_h, max(8, round(face_h / BOX_PER_CROP)))
        small = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
        row, col = divmod(i, cols)
        x = col * cell_w + int(rng.integers(0, max(1, cell_w - side)))
        y = row * cell_h + int(rng.integers(0, max(1, cell_h - side)))
        frame[y:y + side, x:x + side] = small
        boxes.append([x, y, x + side, y + side])
    return frame, np.array(boxes, np.float32)


def found_per_photo(detections, photo_boxes: np.ndarray) -> np.ndarray:
    """How many detections lie inside each pasted photo (a face is the photo's only face)."""
    centres = np.array([(d.box[:2] + d.box[2:]) / 2 for d in detections]).reshape(-1, 2)
    inside = ((centres[:, None, :] >= photo_boxes[None, :, :2]) & (centres[:, None, :] <= photo_boxes[None, :, 2:]))
    return inside.all(axis=2).sum(axis=0)


def test_small_real_faces_in_a_1080p_frame_are_found_and_nothing_else(photos, full):
    heights = list(np.geomspace(26, 110, 20))  # face boxes of 26-110 px: people 1-5 m from a 1080p camera
    frame, boxes = paste_faces(photos, 1920, 1080, heights)
    dets = [d for d in full.detect(frame) if d.score >= 0.5]
    per_photo = found_per_photo(dets, boxes)
    print(f"\n1080p: {np.sum(per_photo >= 1)}/{len(heights)} faces found; per photo {per_photo.tolist()}")
    assert np.sum(per_photo >= 1) >= 19  # recall >= 0.95
    assert per_photo.max() == 1  # one detection per face: the levels and tiles merge
    assert len(dets) == per_photo.sum()  # no detection outside the faces
    # landmarks of every detection lie inside its box (a usable crop)
    for d in dets:
        assert (d.landmarks[:, 0] >= d.box[0] - 2).all() and (d.landmarks[:, 0] <= d.box[2] + 2).all()


def test_the_old_whole_frame_detector_misses_them(photos):
    frame, boxes = paste_faces(photos, 1920, 1080, list(np.geomspace(26, 110, 20)))
    found = found_per_photo([d for d in BlazeFaceDetector().detect(frame) if d.score >= 0.5], boxes)
    assert np.sum(found >= 1) <= 2  # why the scan exists


def test_small_faces_in_a_640x480_frame(photos, full):
    heights = [24, 28, 32, 40, 48, 60, 80, 100]
    frame, boxes = paste_faces(photos, 640, 480, heights, seed=3)
    dets = [d for d in full.detect(frame) if d.score >= 0.5]
    per_photo = found_per_photo(dets, boxes)
    assert np.sum(per_photo >= 1) >= 7 and per_photo.max() == 1 and len(dets) == per_photo.sum()


def test_rolling_slices_cover_the_frame_and_windows_keep_tracks(photos):
    frame, boxes = paste_faces(photos, 1280, 720, [40, 55, 70, 90, 120, 160], seed=5)
    det = MultiScaleDetector(FULL_RANGE, min_face_px=32, slices=4, score_threshold=0.5)
    parts = det.plan(1280, 720)
    assert len(parts) == 4
    everything = {tuple(np.round(d.box)) for d in det.detect(frame)}
    assert len(everything) == 6
    det.reset()
    first = det.run(frame)  # the first run after a reset sweeps all slices
    assert len(first) == 6
    union = []
    for _ in range(len(parts)):  # then one slice per run: together they find every face again
        union += det.run(frame)
    assert np.sum(found_per_photo(union, boxes) >= 1) == 6
    # a slice that does not cover a tracked face still re-detects it through its window
    tracked = first[0]
    shifted = np.roll(frame, 6, axis=1)  # the face moved 6 px to the right since it was tracked
    for _ in range(len(parts)):
        again = det.run(shifted, around=[tracked.box])
        overlap = iou_one_to_many(tracked.box + np.array([6, 0, 6, 0], np.float32),
                                  np.array([d.box for d in again]).reshape(-1, 4))
        assert overlap.max() > 0.6


def test_plan_covers_every_pixel_at_every_level_and_slices_partition_it():
    for width, height, face in ((640, 480, 32), (1920, 1080, 24), (1280, 720, 48), (300, 200, 16)):
        levels = scan_plan(width, height, face, 192, FULL_RANGE.face_px)
        assert levels[-1][0].x1 - levels[-1][0].x0 == width and len(levels[-1]) == 1  # the whole frame, once
        scales = [level[0].scale for level in levels]
        assert scales == sorted(scales, reverse=True) and scales[0] <= 2.0
        for level in levels:
            cover = np.zeros((height, width), bool)
            for t in level:
                cover[t.y0:t.y1, t.x0:t.x1] = True
                assert t.input_shape[0] % 32 == 0 and t.input_shape[1] % 32 == 0
            assert cover.all()
        tiles = [t for level in levels for t in level]
        parts = split_slices(levels, 5)
        assert sorted(map(id, [t for p in parts for t in p])) == sorted(map(id, tiles))


def test_automatic_slices_bound_the_cost_of_a_run():
    det = MultiScaleDetector(FULL_RANGE, min_face_px=32, slices=0)
    for width, height in ((640, 480), (1920, 1080)):
        costs = [sum(t.cost for t in part) for part in det.plan(width, height)]
        assert max(costs) <= 160_000, (width, height, costs)
    assert len(det.plan(1920, 1080)) > len(det.plan(640, 480))  # a larger frame sweeps more slowly, not dearer


def test_grid_anchors_match_mediapipe_layout_and_free_size_graphs_run():
    assert np.allclose(grid_anchors(128, 128, SHORT_RANGE.layers), ssd_anchor_centres() * 128)
    assert np.allclose(grid_anchors(192, 192, FULL_RANGE.layers), ssd_anchor_centres(192, (4,), 1) * 192)
    for model in (SHORT_RANGE, FULL_RANGE):
        net = BlazeFaceNet(model)
        assert len(net.run(np.zeros((3, 96, 160, 3), np.float32))) == 3
        with pytest.raises(ValueError, match="divisible by 32"):
            net.run(np.zeros((1, 100, 160, 3), np.float32))
