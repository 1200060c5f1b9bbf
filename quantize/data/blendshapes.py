"""Soft AU targets on real faces from a real model: MediaPipe Face Landmarker blendshapes (docs/data.md).

No FACS-coded set can be had here, so AUs on real faces are taught by MediaPipe's Face Landmarker
(`face_landmarker.task`, Apache-2.0): 52 ARKit-style blendshape scores and 478 landmarks per face. This module
has two halves:

- `run` (command line: `python -m quantize.data.blendshapes`) runs the Face Landmarker once over a face cache
  and stores the raw scores. It needs the `mediapipe` package, a training-time dependency only, which brings
  its own OpenCV 5 build: install it in a separate virtual environment (docs/data.md).
- `au_targets` maps raw scores to soft targets over our AUs: a fixed blendshape -> AU table (`AU_SOURCES`), each
  score re-based so that what a neutral face shows counts as 0 (`fit_baselines`, on neutral training faces).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.labels import DEFAULT_LABELS

# Which blendshapes stand for which AU (mean of the left/right pair); docs/data.md gives the reasoning.
AU_SOURCES: dict[int, tuple[str, ...]] = {
    1: ("browInnerUp",),
    2: ("browOuterUpLeft", "browOuterUpRight"),
    4: ("browDownLeft", "browDownRight"),
    5: ("eyeWideLeft", "eyeWideRight"),
    6: ("cheekSquintLeft", "cheekSquintRight"),
    7: ("eyeSquintLeft", "eyeSquintRight"),
    9: ("noseSneerLeft", "noseSneerRight"),
    10: ("mouthUpperUpLeft", "mouthUpperUpRight"),
    12: ("mouthSmileLeft", "mouthSmileRight"),
    14: ("mouthDimpleLeft", "mouthDimpleRight"),
    15: ("mouthFrownLeft", "mouthFrownRight"),
    17: ("mouthShrugLower",),
    20: ("mouthStretchLeft", "mouthStretchRight"),
    24: ("mouthPressLeft", "mouthPressRight"),
    26: ("jawOpen",),
}
# AU25 (lips part) comes from the landmarks: the gap between the inner lips (points 13 and 14 of the 478-point
# mesh) over the eye distance (outer eye corners 33 and 263). AU23 (lip tightener) has no blendshape: left
# unlabelled (masked), never guessed.
LIP_INNER = (13, 14)
EYE_CORNERS = (33, 263)
# Inner-lip gap / eye distance: closed below OFF, wide open (surprise's upper quartile on FER2013) from ON.
# ON at 0.08 saturated: a tenth of neutral FER2013 faces pass 0.1, so the neutral baseline hit 1 and AU25 was never on.
LIP_GAP_OFF, LIP_GAP_ON = 0.02, 0.25
BORDER = 0.25  # grey border added around an image before the landmarker (its detector wants context)
SIDE = 192  # the bordered image is resized to this: FER2013's 48 px faces are too small for its detector


@dataclass(frozen=True)
class BlendshapeScores:
    """Raw Face Landmarker output for N faces: `scores` N x 52 (NaN where no face was found)."""

    key: np.ndarray  # str N
    names: tuple[str, ...]
    scores: np.ndarray  # float32 N x 52
    lip_gap: np.ndarray  # float32 N: inner-lip gap / eye distance (NaN where no face)

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.scores).all(axis=1)

    def save(self, path: Path) -> None:
        from edge.fsutil import atomic_writer

        with atomic_writer(path) as fh:
            np.savez(fh, key=self.key, names=np.array(self.names), scores=self.scores, lip_gap=self.lip_gap)

    @classmethod
    def load(cls, path: Path | str) -> BlendshapeScores:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"blendshape file {path} does not exist (python -m quantize.data.blendshapes)")
        with np.load(path, allow_pickle=False) as z:
            return cls(z["key"], tuple(str(n) for n in z["names"]), z["scores"], z["lip_gap"])


def raw_au(scores: BlendshapeScores) -> tuple[np.ndarray, np.ndarray]:
    """(values N x A, labelled A): each AU's source score before re-basing; AU25 from the lip gap, normalised."""
    column = {n: i for i, n in enumerate(scores.names)}
    missing = sorted({n for names in AU_SOURCES.values() for n in names} - set(column))
    if missing:
        raise ValueError(f"blendshape scores lack {missing}")
    aus = DEFAULT_LABELS.aus
    values = np.zeros((len(scores.key), len(aus)), np.float32)
    labelled = np.zeros(len(aus), bool)
    for j, au in enumerate(aus):
        if au in AU_SOURCES:
            values[:, j] = scores.scores[:, [column[n] for n in AU_SOURCES[au]]].mean(axis=1)
            labelled[j] = True
        elif au == 25:
            values[:, j] = np.clip((scores.lip_gap - LIP_GAP_OFF) / (LIP_GAP_ON - LIP_GAP_OFF), 0.0, 1.0)
            labelled[j] = True
    return values, labelled


def fit_baselines(values: np.ndarray, neutral: np.ndarray, quantile: float = 0.9, min_faces: int = 5) -> np.ndarray:
    """Per AU, the level a neutral face reaches (the `quantile` over clearly neutral training faces)."""
    rows = values[neutral & np.isfinite(values).all(axis=1)]
    if len(rows) < min_faces:
        raise ValueError(f"need at least {min_faces} neutral faces with blendshapes to fit baselines, got {len(rows)}")
    return np.quantile(rows, quantile, axis=0).astype(np.float32)


def au_targets(values: np.ndarray, labelled: np.ndarray, baselines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft targets in [0, 1]: (v - b) / (1 - b), clipped; mask = labelled AU and a face was found."""
    span = np.maximum(1.0 - baselines, 1e-3)
    target = np.clip((values - baselines) / span, 0.0, 1.0)
    found = np.isfinite(values).all(axis=1)
    mask = labelled[None, :] & found[:, None]
    return np.where(mask, target, 0.0).astype(np.float32), mask


def _prepare(image: np.ndarray):
    """Grey or BGR image -> RGB with a grey border, resized to SIDE x SIDE (faces ~100 px: what the detector likes)."""
    import cv2

    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    pad = round(BORDER * max(rgb.shape[:2]))
    rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    return np.ascontiguousarray(cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC))


def run(images: list[np.ndarray], keys: np.ndarray, task: Path, progress: bool = True) -> BlendshapeScores:
    """The Face Landmarker on each image (grey or BGR), one face each. Needs `mediapipe` (imported here only)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(task)), num_faces=1,
                                           output_face_blendshapes=True)
    landmarker = vision.FaceLandmarker.create_from_options(options)
    names: tuple[str, ...] = ()
    scores = np.full((len(images), 52), np.nan, np.float32)
    gaps = np.full(len(images), np.nan, np.float32)
    started = time.monotonic()
    try:
        for i, image in enumerate(images):
            if image is None:
                continue
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=_prepare(image)))
            if result.face_blendshapes:
                cats = result.face_blendshapes[0]
                names = names or tuple(c.category_name for c in cats)
                scores[i] = [c.score for c in cats]
                marks = np.array([(p.x, p.y) for p in result.face_landmarks[0]], np.float64)
                eye = np.linalg.norm(marks[EYE_CORNERS[0]] - marks[EYE_CORNERS[1]])
                gaps[i] = np.linalg.norm(marks[LIP_INNER[0]] - marks[LIP_INNER[1]]) / max(eye, 1e-6)
            if progress and (i + 1) % 1000 == 0:
                rate = (i + 1) / max(time.monotonic() - started, 1e-6)
                print(f"blendshapes: {i + 1}/{len(images)} ({rate:.0f}/s)", file=sys.stderr, flush=True)
    finally:
        landmarker.close()
    if not names:
        raise RuntimeError("the Face Landmarker found no face in any image")
    return BlendshapeScores(np.asarray(keys), names, scores, gaps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MediaPipe Face Landmarker blendshapes for a face cache (run once)")
    parser.add_argument("--faces", type=Path, required=True, help="face cache .npz (affect-quantize faces)")
    parser.add_argument("--task", type=Path, required=True, help="face_landmarker.task (3,758,596 bytes)")
    parser.add_argument("--out", type=Path, required=True, help="output .npz (<split>.blendshapes.npz beside it)")
    parser.add_argument("--fer2013", type=Path, default=None,
                        help="the FER2013 folders the cache was built from: its faces are read from there (the "
                             "landmarker finds more faces in the originals than in the aligned crops)")
    parser.add_argument("--all", action="store_true",
                        help="also rows with AU labels of their own (London photos, generated faces)")
    args = parser.parse_args(argv)
    if not args.task.is_file():
        parser.error(f"--task {args.task}: no such file")
    from quantize.data.fer2013 import read_original
    from quantize.data.types import DataError

    with np.load(args.faces, allow_pickle=False) as z:
        crops, keys, datasets, labelled = z["images"], z["key"], z["dataset"], z["au_mask"].any(axis=1)
    images: list[np.ndarray | None] = []
    for crop, key, dataset, own in zip(crops, keys, datasets, labelled, strict=True):
        if own and not args.all:
            images.append(None)  # its own AU labels are used in training
        elif args.fer2013 is not None and dataset == "fer2013":
            try:
                images.append(read_original(args.fer2013, key))
            except DataError as e:
                parser.error(str(e))
        else:
            images.append(crop)
    started = time.monotonic()
    result = run(images, keys, args.task)
    result.save(args.out)
    print(json.dumps({"faces": len(keys), "asked": sum(i is not None for i in images), "found": int(result.found.sum()),
                      "seconds": round(time.monotonic() - started, 1), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
