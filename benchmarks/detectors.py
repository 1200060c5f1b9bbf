"""Face detectors side by side: recall and precision by face size on an annotated set, and time per frame.

Detectors (all on the CPU, one thread each):

- `scan-retina`: the multi-scale scan (edge/detection/scan.py) with RetinaFace-MobileNet0.25
  (edge/detection/retinaface.py);
- `retina-device`: `scan-retina` followed by the device's face gate (edge/detection/faces.py: the same score and
  smallest face, landmark sanity, box mostly inside the frame; no face limit): the faces the daemon publishes;
- `scan-full`: the same scan with MediaPipe's full-range BlazeFace;
- `scan-short`: the same scan with the short-range BlazeFace;
- `short-whole`: the short-range BlazeFace on the whole frame letterboxed into 128x128 (the detector before issue 17);
- `haar`: OpenCV's stock `haarcascade_frontalface_default.xml`, `detectMultiScale` with OpenCV's defaults
  (scaleFactor 1.1, minNeighbors 3), the usual first try.

Accuracy (`--images DIR --gt FILE`, WIDER format; tools/prepare_wider_subset.py makes the set docs/capture.md
names): a detection matches the unmatched ground-truth face it overlaps most, if IoU >= `--iou`; greedy, best
score first. Faces flagged invalid, smaller than the smallest band, or outside the population (`--population
frontal`: typical pose and no heavy occlusion) are "ignore" faces: matching one is neither a hit nor a false
positive. Recall per band of ground-truth box height (pixels of the evaluated image); false positives per band of
the detection's own height; precision = hits / (hits + false positives) in the band.

Time (`--time`): ms per detector call on 640x480 and 1920x1080 frames of the multi-face demo scene (real London
faces, edge/capture/scene.py): the scan's per-run cost (one slice plus a window per face, what the daemon pays
every `every_k_frames`) and its full sweep, the whole-frame short-range pass, Haar.

    set=/work/cache/facedet/wider_val_200
    python benchmarks/detectors.py --images $set/images --gt $set/gt.txt [--population frontal] [--only haar,...]
    python benchmarks/detectors.py --images $set/images --gt $set/gt.txt --sweep 0.5,0.6,0.7   # the device's
        # faces at each detection.score_threshold: recall, false positives and F1
    python benchmarks/detectors.py --time
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.config.models import DetectionConfig
from edge.detection.blazeface import FULL_RANGE, SHORT_RANGE, BlazeFaceDetector
from edge.detection.faces import FaceGate
from edge.detection.nms import iou_one_to_many
from edge.detection.retinaface import RETINAFACE
from edge.detection.scan import MultiScaleDetector

BANDS = (16, 24, 32, 48, 64, 96, 10_000)
DETECTORS = ("scan-retina", "retina-device", "scan-full", "scan-short", "short-whole", "haar")


@dataclass
class Truth:
    boxes: np.ndarray  # (n, 4) xyxy
    counted: np.ndarray  # (n,) bool: in the population (else: ignore)


def read_gt(path: Path, population: str) -> dict[str, Truth]:
    """WIDER-format ground truth -> per image name: boxes and whether each face counts."""
    lines = path.read_text().split("\n")
    out, i = {}, 0
    while i < len(lines) and lines[i].strip():
        name, count = lines[i].strip(), int(lines[i + 1])
        rows = np.array([[int(v) for v in lines[i + 2 + k].split()[:10]] for k in range(count)], int).reshape(-1, 10)
        boxes = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], axis=1).astype(np.float32)
        counted = (rows[:, 7] == 0) & (rows[:, 3] >= BANDS[0])
        if population == "frontal":
            counted &= (rows[:, 9] == 0) & (rows[:, 8] < 2)  # typical pose, not heavily occluded
        out[name] = Truth(boxes, counted)
        i += 2 + max(count, 0)
    return out


def band_of(height: float) -> int | None:
    for k in range(len(BANDS) - 1):
        if BANDS[k] <= height < BANDS[k + 1]:
            return k
    return None


def band_name(k: int) -> str:
    return f"{BANDS[k]}-{BANDS[k + 1]}" if BANDS[k + 1] < 10_000 else f">={BANDS[k]}"


class Haar:
    def __init__(self) -> None:
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        found = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in found], np.float32).reshape(-1, 4)
        return boxes, np.ones(len(boxes), np.float32)


def make_detectors(min_face_px: float, score: float) -> dict[str, Any]:
    def blaze(det):
        def run(image):
            found = det(image)
            return (np.array([d.box for d in found], np.float32).reshape(-1, 4),
                    np.array([d.score for d in found], np.float32))
        return run

    retina = MultiScaleDetector(RETINAFACE, min_face_px=min_face_px, score_threshold=score)
    # as edge.tracking.frontend opens it: the scan at min(0.5, score), the gate at score
    device = MultiScaleDetector(RETINAFACE, min_face_px=min_face_px, score_threshold=min(0.5, score))
    gate = FaceGate(min_face_px=min_face_px, max_faces=10_000, score_threshold=score)
    full = MultiScaleDetector(FULL_RANGE, min_face_px=min_face_px, score_threshold=score)
    short = MultiScaleDetector(SHORT_RANGE, min_face_px=min_face_px, score_threshold=score)
    whole = BlazeFaceDetector(score_threshold=score)
    return {"scan-retina": blaze(retina.detect),
            "retina-device": blaze(lambda image: gate.apply(device.detect(image), image.shape)),
            "scan-full": blaze(full.detect), "scan-short": blaze(short.detect),
            "short-whole": blaze(whole.detect), "haar": Haar().boxes}


def evaluate(images: Path, gt: dict[str, Truth], detectors: dict[str, Any], iou: float) -> dict[str, Any]:
    results = {name: new_tally() for name in detectors}
    for image, truth in read_images(images, gt):
        for det_name, run in detectors.items():
            start = time.perf_counter()
            boxes, scores = run(image)
            results[det_name]["seconds"] += time.perf_counter() - start
            tally(results[det_name], truth, boxes, scores, iou)
    return results


def sweep(images: Path, gt: dict[str, Truth], min_face_px: float, thresholds: list[float],
          iou: float) -> dict[float, Any]:
    """The device's faces (scan + gate) at each `detection.score_threshold`: the scan runs at
    min(0.5, threshold) and the gate keeps scores >= threshold, so one run at the lowest serves all."""
    lowest = min(thresholds)
    device = MultiScaleDetector(RETINAFACE, min_face_px=min_face_px, score_threshold=min(0.5, lowest))
    gate = FaceGate(min_face_px=min_face_px, max_faces=10_000, score_threshold=lowest)
    results = {t: new_tally() for t in thresholds}
    for image, truth in read_images(images, gt):
        found = gate.apply(device.detect(image), image.shape)
        boxes = np.array([d.box for d in found], np.float32).reshape(-1, 4)
        scores = np.array([d.score for d in found], np.float32)
        for t in thresholds:
            tally(results[t], truth, boxes[scores >= t], scores[scores >= t], iou)
    return results


def new_tally() -> dict[str, Any]:
    n = len(BANDS) - 1
    return {"hits": np.zeros(n, int), "faces": np.zeros(n, int), "fp": np.zeros(n, int), "fp_small": 0,
            "seconds": 0.0}


def read_images(images: Path, gt: dict[str, Truth]):
    for name, truth in gt.items():
        image = cv2.imread(str(images / name))
        if image is None:
            raise SystemExit(f"cannot read {images / name}")
        yield image, truth


def tally(r: dict[str, Any], truth: Truth, boxes: np.ndarray, scores: np.ndarray, iou: float) -> None:
    """Add one image's hits, faces and false positives to `r` (greedy matching, best score first)."""
    heights = truth.boxes[:, 3] - truth.boxes[:, 1]
    matched = np.zeros(len(truth.boxes), bool)
    for i in np.argsort(-scores, kind="stable"):
        overlap = iou_one_to_many(boxes[i], truth.boxes) if len(truth.boxes) else np.zeros(0)
        overlap[matched] = -1
        j = int(np.argmax(overlap)) if len(overlap) else -1
        if j >= 0 and overlap[j] >= iou:
            matched[j] = True
            if truth.counted[j]:
                r["hits"][band_of(heights[j])] += 1
            continue
        k = band_of(float(boxes[i, 3] - boxes[i, 1]))
        if k is None:
            r["fp_small"] += 1
        else:
            r["fp"][k] += 1
    for j in np.flatnonzero(truth.counted):
        r["faces"][band_of(heights[j])] += 1


def accuracy_table(results: dict[str, Any], title: str) -> list[str]:
    n = len(BANDS) - 1
    names = list(results)
    lines = [title, f"  {'band (px)':<10}{'faces':>7}" + "".join(f"{name:>24}" for name in names),
             f"  {'':<17}" + "".join(f"{'recall':>10}{'FP':>6}{'prec':>8}" for _ in names)]
    for k in range(n):
        faces = results[names[0]]["faces"][k]
        cells = ""
        for name in names:
            r = results[name]
            hits, fp = r["hits"][k], r["fp"][k]
            recall = hits / faces if faces else float("nan")
            precision = hits / (hits + fp) if hits + fp else float("nan")
            cells += f"{recall:>10.3f}{fp:>6d}{precision:>8.3f}"
        lines.append(f"  {band_name(k):<10}{faces:>7d}{cells}")
    for label, lo in ((">=32", 2), (">=16", 0)):
        faces = int(results[names[0]]["faces"][lo:].sum())
        cells = ""
        for name in names:
            r = results[name]
            hits, fp = int(r["hits"][lo:].sum()), int(r["fp"][lo:].sum())
            cells += f"{hits / faces:>10.3f}{fp:>6d}{hits / max(hits + fp, 1):>8.3f}"
        lines.append(f"  {label:<10}{faces:>7d}{cells}")
    return lines


def sweep_table(results: dict[float, Any], title: str) -> list[str]:
    lines = [title, f"  {'score':<7}{'recall>=32':>11}{'FP>=32':>8}{'recall>=16':>11}{'FP>=16':>8}{'F1>=16':>8}"]
    for t, r in results.items():
        cells = ""
        for lo in (2, 0):
            faces, hits, fp = int(r["faces"][lo:].sum()), int(r["hits"][lo:].sum()), int(r["fp"][lo:].sum())
            cells += f"{hits / max(faces, 1):>11.3f}{fp:>8d}"
        recall, precision = hits / max(faces, 1), hits / max(hits + fp, 1)
        cells += f"{2 * recall * precision / max(recall + precision, 1e-9):>8.3f}"
        lines.append(f"  {t:<7.2f}{cells}")
    return lines


def time_table(repeats: int, min_face_px: float, slices: int, photos: Path | None) -> list[str]:
    from edge.capture.demo import SceneSpec, load_photo_pairs, render_scene

    pairs = load_photo_pairs(photos)
    lines = ["time per call, ms (median [p90] of repeats; multi-face demo scene, 1 thread each):",
             f"  {'frame':<11}{'faces':>6}{'slices':>7}{'scan-retina run':>18}{'scan-retina sweep':>18}"
             f"{'scan-full run':>18}{'scan-full sweep':>18}{'scan-short run':>18}{'short-whole':>16}{'haar':>16}"]
    for width, height, count in ((640, 480, 1), (640, 480, 4), (1920, 1080, 4), (1920, 1080, 16)):
        frame = render_scene(pairs, SceneSpec(width, height, count), 0.0)
        retina = MultiScaleDetector(RETINAFACE, min_face_px=min_face_px, slices=slices)
        full = MultiScaleDetector(FULL_RANGE, min_face_px=min_face_px, slices=slices)
        short = MultiScaleDetector(SHORT_RANGE, min_face_px=min_face_px, slices=slices)
        tracks = [d.box for d in full.run(frame)]  # the first run: a whole sweep
        short.run(frame)
        retina.run(frame)
        whole, haar = BlazeFaceDetector(), Haar()
        runs = {"retina run": lambda f=retina, x=frame, b=tracks: f.run(x, b),
                "retina sweep": lambda f=retina, x=frame: f.detect(x),
                "full run": lambda f=full, x=frame, b=tracks: f.run(x, b),
                "full sweep": lambda f=full, x=frame: f.detect(x),
                "short run": lambda s=short, x=frame, b=tracks: s.run(x, b),
                "whole": lambda w=whole, x=frame: w.detect(x), "haar": lambda h=haar, x=frame: h.boxes(x)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - start) * 1e3)
        cells = "".join(f"{np.median(times[k]):>10.1f} [{np.percentile(times[k], 90):>5.1f}]" for k in runs)
        plans = f"{len(retina.plan(width, height))}/{len(full.plan(width, height))}"
        lines.append(f"  {width}x{height:<6}{count:>6}{plans:>7}{cells}")
    lines.append("  (run: one sweep slice plus a window around each of the scene's faces, what the daemon pays every "
                 f"every_k_frames; sweep: every slice at once; slices: retina/full; min_face_px {min_face_px:g}; the "
                 "detector's first run sweeps everything and is not counted)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="folder of the evaluation images")
    parser.add_argument("--gt", type=Path, help="WIDER-format ground truth for those images")
    parser.add_argument("--population", choices=("all", "frontal"), default="all",
                        help="faces that count: all valid ones, or typical pose without heavy occlusion")
    parser.add_argument("--iou", type=float, default=0.4, help="IoU for a hit (default 0.4)")
    parser.add_argument("--min-face-px", type=float, default=16, help="the scan's smallest face (default 16)")
    parser.add_argument("--score", type=float, default=DetectionConfig().score_threshold,
                        help="detection.score_threshold (default: the config's default)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated detectors to run (default: all of {', '.join(DETECTORS)})")
    parser.add_argument("--sweep", default=None, metavar="T1,T2,...",
                        help="instead of the table: the device's faces (retina scan + gate) at each score threshold")
    parser.add_argument("--time", action="store_true", help="time the detectors on demo-scene frames")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--time-min-face-px", type=float, default=32, help="the scan's smallest face when timing")
    parser.add_argument("--photos", type=Path, default=None, help="London-style photo pairs for the timing scene")
    parser.add_argument("--slices", type=int, default=0, help="sweep slices for the per-run time (default 0: auto)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from edge.pipeline.bench import machine, machine_line

    m = machine()
    out: dict[str, Any] = {"machine": m}
    lines = [machine_line(m)]
    if args.images is not None:
        if args.gt is None or not args.gt.is_file():
            parser.error(f"--images needs --gt, a WIDER-format ground-truth file (got {args.gt})")
        gt = read_gt(args.gt, args.population)
        if args.sweep:
            thresholds = sorted(float(t) for t in args.sweep.split(","))
            results = sweep(args.images, gt, args.min_face_px, thresholds, args.iou)
            out["sweep"] = {t: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}
                            for t, r in results.items()}
            lines += sweep_table(results, f"{len(gt)} images, {args.gt}; population {args.population}; hit: IoU >= "
                                          f"{args.iou}; retina-device, scan min_face_px {args.min_face_px:g}")
            print(json.dumps(out, indent=2, default=str) if args.json else "\n".join(lines))
            return 0
        detectors = make_detectors(args.min_face_px, args.score)
        if args.only:
            unknown = set(args.only.split(",")) - set(detectors)
            if unknown:
                parser.error(f"--only: unknown detector(s) {', '.join(sorted(unknown))}; choose from "
                             f"{', '.join(detectors)}")
            detectors = {k: v for k, v in detectors.items() if k in args.only.split(",")}
        results = evaluate(args.images, gt, detectors, args.iou)
        out["accuracy"] = {k: {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv) for kk, vv in v.items()}
                           for k, v in results.items()}
        title = (f"{len(gt)} images, {args.gt}; population {args.population}; hit: IoU >= {args.iou}; "
                 f"score >= {args.score}; scan min_face_px {args.min_face_px:g}")
        lines += accuracy_table(results, title)
        lines.append("  ms per image (mean): " + ", ".join(
            f"{name} {r['seconds'] * 1e3 / len(gt):.1f}" for name, r in results.items()))
    if args.time:
        lines += time_table(args.repeats, args.time_min_face_px, args.slices, args.photos)
    print(json.dumps(out, indent=2, default=str) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
