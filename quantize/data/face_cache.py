"""Aligned face crops of labelled images, computed once and cached: detector + five-point alignment, as on the device.

Each image goes through the device's own face front end (by default the shipped detector configuration: the
multi-scale RetinaFace scan and the face gate, `FaceFrontEnd.still_faces`) and aligner
(`edge.alignment`), so training crops have the geometry, landmark noise and failure modes the model meets in the
field: a student trained on one detector's landmarks and run on another's loses faces to the difference. Crops
are stored grey, with a margin of context around the model's input (`CropGeometry`) so that training-time warps
(rotation, anisotropic scale, pose) have real pixels to pull in instead of replicated borders; the model's input
is the centre. Tight face crops (FER2013) are detected and aligned on their bordered frame, exactly as
`affect-sensor analyze --face-crops` runs them (`edge.analysis.face_crops`); the few whose face is still not found
are placed by the median frame-to-template transform of their dataset (`aligned_by = "median"`), which fits a
dataset of centred crops well.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from edge.alignment import similarity_matrix, template_for
from edge.analysis.face_crops import face_crop_frame
from edge.config.models import DetectionConfig
from edge.detection import BlazeFaceDetector
from edge.detection.faces import Detection
from edge.fsutil import atomic_writer
from edge.labels import BASIC_EXPRESSIONS
from edge.tracking.frontend import KEEP_SCORE, FaceFrontEnd
from quantize.data.types import NUM_AUS, DataError, LabelledImage


@dataclass(frozen=True)
class CropGeometry:
    """The model sees `size` x `size` at the device template; the cache keeps `margin` pixels more per side."""

    size: int = 64
    margin: int = 8

    @property
    def context(self) -> int:
        return self.size + 2 * self.margin

    def template(self) -> np.ndarray:
        """Five-point template in context-crop pixels."""
        return template_for(self.size) + np.float32(self.margin)


@dataclass
class FaceCache:
    """Arrays of N aligned faces; `images` is uint8 N x context x context (grey)."""

    images: np.ndarray
    key: np.ndarray  # str N: the source's key
    dataset: np.ndarray  # str N
    person: np.ndarray  # str N
    expression: np.ndarray  # int64 N, -1 = none
    votes: np.ndarray  # float32 N x E, crowd votes (all zero = none)
    au: np.ndarray  # float32 N x A
    au_mask: np.ndarray  # bool N x A
    aligned_by: np.ndarray  # str N: "detector", "median" (tight crop, no face found), "template" (generated)
    size: int
    margin: int

    def __len__(self) -> int:
        return len(self.key)

    @property
    def geometry(self) -> CropGeometry:
        return CropGeometry(self.size, self.margin)

    def subset(self, keep: np.ndarray) -> FaceCache:
        arrays = {f.name: getattr(self, f.name)[keep] for f in fields(self) if f.name not in ("size", "margin")}
        return FaceCache(**arrays, size=self.size, margin=self.margin)

    def resized(self, size: int) -> FaceCache:
        """The same faces for a model of input `size` (area-resampled; the margin scales with it)."""
        if size == self.size:
            return self
        margin = round(self.margin * size / self.size)
        side = size + 2 * margin
        images = np.stack([cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in self.images])
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("size", "margin", "images")}
        return FaceCache(images=images, **arrays, size=size, margin=margin)

    def save(self, path: Path) -> None:
        """One .npz, written atomically."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("size", "margin")}
        with atomic_writer(path) as fh:
            np.savez(fh, **arrays, geometry=np.array(json.dumps({"size": self.size, "margin": self.margin})))

    @classmethod
    def load(cls, path: Path | str) -> FaceCache:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"face cache {path} does not exist (build it with `affect-quantize faces`)")
        with np.load(path, allow_pickle=False) as z:
            names = [f.name for f in fields(cls) if f.name not in ("size", "margin")]
            missing = [n for n in [*names, "geometry"] if n not in z.files]
            if missing:
                raise DataError(f"face cache {path} lacks arrays {missing}")
            geometry = json.loads(str(z["geometry"]))
            return cls(**{n: z[n] for n in names}, size=int(geometry["size"]), margin=int(geometry["margin"]))

    @classmethod
    def concat(cls, parts: Sequence[FaceCache]) -> FaceCache:
        geometries = {(p.size, p.margin) for p in parts}
        if len(geometries) != 1:
            raise DataError(f"face caches of different geometry cannot be joined: {sorted(geometries)}")
        names = [f.name for f in fields(cls) if f.name not in ("size", "margin")]
        size, margin = geometries.pop()
        return cls(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names}, size=size, margin=margin)


def _frame(item: LabelledImage, image: np.ndarray) -> np.ndarray:
    """What the device's pipeline runs on: the image, or for a tight face crop its bordered, upscaled frame
    (`analyze --face-crops`), so training crops and measured crops are made the same way."""
    return face_crop_frame(image).frame if item.tight else image


def _median_transform(matrices: list[np.ndarray], widths: list[int]) -> np.ndarray | None:
    """Median similarity in frame-width-normalised coordinates (tight crops share a framing, not a size)."""
    if not matrices:
        return None
    params = [[m[0, 0] * w, m[1, 0] * w, m[0, 2], m[1, 2]] for m, w in zip(matrices, widths, strict=True)]
    a, b, tx, ty = np.median(np.array(params), axis=0)
    return np.array([[a, -b, tx], [b, a, ty]], np.float64)


def _to_grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


FACE_FINDERS = ("device", "short-whole")


def face_finder(name: str) -> Callable[[np.ndarray], list[Detection]]:
    """The detector a cache is made with: `device`, the shipped detector and gate with faces kept down to the
    score a track continues on (KEEP_SCORE: every training image holds a face, and in video those are the
    landmarks the model is fed); `short-whole`, the short-range BlazeFace on the whole frame, with which the
    caches of bundle builds 2-4 were made (kept so that they can be rebuilt)."""
    if name == "device":
        return FaceFrontEnd.from_config(DetectionConfig(score_threshold=KEEP_SCORE)).still_faces
    if name == "short-whole":
        return BlazeFaceDetector().detect
    raise ValueError(f"unknown face finder {name!r}; choose from {', '.join(FACE_FINDERS)}")


def build_face_cache(items: Sequence[LabelledImage], geometry: CropGeometry = CropGeometry(),
                     find_faces: Callable[[np.ndarray], list[Detection]] | None = None,
                     progress: bool = True) -> tuple[FaceCache, dict[str, int]]:
    """Detect, align and crop every item; returns the cache and counts (aligned by detector / median / dropped).

    Two passes over the images (the median placement needs every detection first; keeping the frames would not
    fit in memory). Items that are not tight crops and show no face are dropped (counted), never guessed.
    """
    find_faces = find_faces or face_finder("device")
    template = geometry.template()
    found: list[np.ndarray | None] = []
    matrices: dict[str, list[np.ndarray]] = {}
    widths: dict[str, list[int]] = {}
    started, n, tty = time.monotonic(), len(items), sys.stderr.isatty()
    every, start, end = (500, "\r", "") if tty else (5000, "", "\n")
    for i, item in enumerate(items):
        frame = _frame(item, item.read())
        faces = find_faces(frame)
        points = max(faces, key=lambda d: d.area).landmarks.astype(np.float32) if faces else None
        found.append(points)
        if points is not None and item.tight:
            matrices.setdefault(item.dataset, []).append(similarity_matrix(points, template))
            widths.setdefault(item.dataset, []).append(frame.shape[1])
        # A terminal gets one line rewritten every 500 faces; a log (systemd, nohup) a new line every 5000.
        if progress and (i + 1) % every == 0:
            rate = (i + 1) / max(time.monotonic() - started, 1e-6)
            print(f"{start}faces: {i + 1}/{n} ({rate:.0f}/s)", end=end, file=sys.stderr, flush=True)
    if progress and tty:
        print(file=sys.stderr)
    medians = {d: _median_transform(m, widths[d]) for d, m in matrices.items()}

    rows, counts = [], {"detector": 0, "median": 0, "dropped": 0}
    crops = []
    for item, points in zip(items, found, strict=True):
        if points is None and not (item.tight and medians.get(item.dataset) is not None):
            counts["dropped"] += 1
            continue
        frame = _frame(item, item.read())
        if points is not None:
            matrix, how = similarity_matrix(points, template), "detector"
        else:
            unit = medians[item.dataset]
            matrix, how = np.hstack([unit[:, :2] / frame.shape[1], unit[:, 2:]]).astype(np.float32), "median"
        counts[how] += 1
        crops.append(cv2.warpAffine(_to_grey(frame), matrix, (geometry.context, geometry.context),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
        rows.append((item, how))
    if not rows:
        raise DataError("no face could be aligned in any of the images")
    return _cache_from(crops, rows, geometry), counts


def _cache_from(crops: list[np.ndarray], rows: list[tuple[LabelledImage, str]], geometry: CropGeometry) -> FaceCache:
    e = len(BASIC_EXPRESSIONS)
    zeros_au, no_mask = np.zeros(NUM_AUS, np.float32), np.zeros(NUM_AUS, bool)
    return FaceCache(
        images=np.stack(crops).astype(np.uint8),
        key=np.array([it.key for it, _ in rows]),
        dataset=np.array([it.dataset for it, _ in rows]),
        person=np.array([it.person or it.key for it, _ in rows]),
        expression=np.array([it.expression for it, _ in rows], np.int64),
        votes=np.stack([it.votes if it.votes is not None else np.zeros(e, np.float32) for it, _ in rows]),
        au=np.stack([it.au if it.au is not None else zeros_au for it, _ in rows]).astype(np.float32),
        au_mask=np.stack([it.au_mask if it.au_mask is not None else no_mask for it, _ in rows]).astype(bool),
        aligned_by=np.array([how for _, how in rows]),
        size=geometry.size,
        margin=geometry.margin,
    )


def cache_from_template_crops(samples: Sequence, crop_size: int, geometry: CropGeometry = CropGeometry(),
                              key_prefix: str = "gen") -> FaceCache:
    """FaceSamples already aligned to `template_for(crop_size)` (generated faces) -> context crops of `geometry`."""
    scale = geometry.size / crop_size
    matrix = np.array([[scale, 0, geometry.margin], [0, scale, geometry.margin]], np.float32)
    crops, rows = [], []
    for i, s in enumerate(samples):
        grey = cv2.cvtColor(s.image, cv2.COLOR_RGB2GRAY)
        crops.append(cv2.warpAffine(grey, matrix, (geometry.context, geometry.context), flags=cv2.INTER_AREA,
                                    borderMode=cv2.BORDER_REPLICATE))
        rows.append((LabelledImage(f"{key_prefix}/{i}", lambda: None, s.expression, s.dataset, s.person,
                                   au=s.au, au_mask=s.au_mask), "template"))
    return _cache_from(crops, rows, geometry)
