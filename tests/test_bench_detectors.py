"""benchmarks/detectors.py (the matching that turns detections into recall and false positives; the script end to
end on a small annotated set the test writes from a real London photo) and tools/prepare_fddb.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]


def _detectors():
    return load_script("benchmarks/detectors.py", "detectors_bench")


def test_tally_counts_hits_ignores_and_false_positives_by_band():
    bench = _detectors()
    truth = bench.Truth(boxes=np.array([[0, 0, 40, 40], [100, 100, 120, 120]], np.float32),
                        counted=np.array([True, False]))  # the 20 px face is an "ignore" face
    boxes = np.array([[1, 1, 41, 41],  # hit on the 40 px face (band 32-48)
                      [100, 100, 121, 121],  # on the ignore face: neither hit nor false positive
                      [200, 200, 230, 230],  # nothing there: a false positive of 30 px (band 24-32)
                      [300, 300, 310, 310],  # smaller than the smallest band
                      [2, 2, 42, 42]], np.float32)  # a second box on the matched face: a false positive
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    r = bench.new_tally()
    bench.tally(r, truth, boxes, scores, iou=0.4)
    assert r["hits"].tolist() == [0, 0, 1, 0, 0, 0]
    assert r["faces"].tolist() == [0, 0, 1, 0, 0, 0]
    assert r["fp"].tolist() == [0, 1, 1, 0, 0, 0] and r["fp_small"] == 1


def test_script_on_a_real_face_at_two_sizes(tmp_path, london_dir):
    face = cv2.imread(str(london_dir / "001_03.jpg"))
    canvas = np.full((480, 640, 3), 110, np.uint8)
    rows = []
    for x, side in ((60, 200), (400, 90)):  # the photo is a head-and-shoulders shot: the face is ~half its height
        canvas[100:100 + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "two.jpg"), canvas)
    found = subprocess.run([sys.executable, str(REPO / "benchmarks" / "detectors.py"), "--images",
                            str(tmp_path / "images"), "--gt", str(tmp_path / "none.txt"), "--only", "retina-device"],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode != 0 and "none.txt" in found.stderr  # a missing ground-truth file is named
    # the ground truth: the detector's own boxes on the large copy scaled to the small one, so both are real faces
    bench = _detectors()
    boxes, scores = bench.make_detectors(16, 0.5)["retina-device"](canvas)
    assert len(boxes) == 2
    above = float(scores.max()) + 1e-3
    for x1, y1, x2, y2 in boxes:
        rows.append(f"{int(x1)} {int(y1)} {int(x2 - x1)} {int(y2 - y1)} 0 0 0 0 0 0")
    (tmp_path / "gt.txt").write_text(f"two.jpg\n{len(rows)}\n" + "\n".join(rows) + "\n")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "detectors.py"), "--images",
                          str(tmp_path / "images"), "--gt", str(tmp_path / "gt.txt"), "--sweep", f"0.5,{above}",
                          "--json"], capture_output=True, text=True, timeout=120, check=True)
    sweep = json.loads(out.stdout)["sweep"]
    low, high = sweep["0.5"], sweep[str(above)]
    assert sum(low["hits"]) == 2 and sum(low["fp"]) == 0
    assert sum(high["hits"]) == 0 and sum(high["faces"]) == 2  # above every score: the gate keeps no face
    table = subprocess.run([sys.executable, str(REPO / "benchmarks" / "detectors.py"), "--images",
                            str(tmp_path / "images"), "--gt", str(tmp_path / "gt.txt"), "--only", "haar,retina-device"],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "retina-device" in table and "haar" in table and "scan-full" not in table


def _prepare_fddb():
    return load_script("tools/prepare_fddb.py", "prepare_fddb")


def test_fddb_ellipse_boxes():
    fddb = _prepare_fddb()
    # an upright face: major axis vertical (angle pi/2), 60 x 40 radii around (100, 80)
    assert fddb.ellipse_box((60.0, 40.0, np.pi / 2, 100.0, 80.0), 640, 480) == (60, 20, 80, 120)
    assert fddb.ellipse_box((60.0, 40.0, 0.0, 100.0, 80.0), 640, 480) == (40, 40, 120, 80)
    assert fddb.ellipse_box((60.0, 40.0, np.pi / 2, 10.0, 80.0), 640, 480) == (0, 20, 50, 120)  # clipped


def test_fddb_snapshot_is_matched_back_to_its_entries(tmp_path):
    """Two FDDB entries, the snapshot holding only the second under the name 000000: it is found by its boxes."""
    fddb = _prepare_fddb()
    src = tmp_path / "src"
    (src / "FDDB2007" / "Annotations").mkdir(parents=True)
    (src / "FDDB2007" / "JPEGImages").mkdir()
    (src / "FDDB-folds").mkdir()
    dropped, kept = (30.0, 20.0, 1.5, 100.0, 90.0), (50.0, 35.0, 1.4, 200.0, 150.0)
    lines = ["2002/07/19/big/img_1", "1", " ".join(map(str, dropped)) + " 1",
             "2002/07/19/big/img_2", "1", " ".join(map(str, kept)) + " 1"]
    for fold in range(1, 11):
        (src / "FDDB-folds" / f"FDDB-fold-{fold:02d}-ellipseList.txt").write_text("\n".join(lines) + "\n"
                                                                                 if fold == 1 else "")
    (x1, y1, x2, y2), = fddb.converter_boxes([kept], 400, 300)
    (src / "FDDB2007" / "Annotations" / "000000.xml").write_text(
        f"<annotation><size><width>400</width><height>300</height></size><object><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>")
    cv2.imwrite(str(src / "FDDB2007" / "JPEGImages" / "000000.jpg"), np.zeros((300, 400, 3), np.uint8))
    out = tmp_path / "out"
    assert fddb.main(["--src", str(src), "--out", str(out)]) == 0
    box = " ".join(map(str, fddb.ellipse_box(kept, 400, 300)))
    assert (out / "gt.txt").read_text() == f"2002_07_19_big_img_2.jpg\n1\n{box} 0 0 0 0 0 0\n"
    assert (out / "skipped.txt").read_text() == "2002/07/19/big/img_1\n"
    assert (out / "images" / "2002_07_19_big_img_2.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary folder left behind
