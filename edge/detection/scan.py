"""Multi-scale scan for small and many faces, amortised over detector runs and refreshed around tracks.

Why: a detector that sees the whole 1080p frame at 192x192 shrinks a 60 px face
to 6 px, below what any BlazeFace finds (~16-20 px at its input). The scan runs
the fully convolutional graph over the frame resized to a pyramid of scales:
the finest makes a `min_face_px` face ~the model's `face_px` at its input, each next
level is `LEVEL_RATIO` coarser, down to the whole frame in one input. Every level
is cut into overlapping tiles of equal size (one batched call per level), and
the tiles are dealt into `slices` parts of similar cost: each detector run scans
one part, so the whole frame is covered every `slices` runs at ~1/slices of the
cost (`slices=0`: as many as keep a run near `SLICE_PX` model input pixels, so a
1080p camera sweeps more slowly than a 640x480 one at the same cost per run).
Faces already tracked are re-detected on every run in a small window around
each track (one batched call), so tracks never wait for the sweep.

Candidates cut by an inner tile edge are dropped (the tile overlap guarantees
the face is whole in a neighbour); the rest are merged by weighted NMS.

Near faces and track windows go to a second model, `near` (the short-range
graph by default): measured on FER2013 faces (48 px, upscaled, blurred) framed
the way `analyze --face-crops` frames them, the full-range graph found 129 of
200 on the whole frame and 98 of 199 in a track window, the short-range graph
199 and 197. Where a face fills a good part of its input — the whole frame of
a close face, every track window by construction — the short-range graph is
the one trained for it; the full-range tiles keep the small, far faces. Its
score threshold is 0.6: it keeps 98 % of those faces (99 % at 0.5), and the
false positives it adds to the scan on the WIDER FACE subset of docs/capture.md
fall from 24 at 0.5 to 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.detection.blazeface import (
    FULL_RANGE,
    SHORT_RANGE,
    BlazeFaceModel,
    BlazeFaceNet,
    RawFaces,
    check_frame,
    letterbox,
    merge,
)
from edge.detection.faces import Detection
from edge.detection.retinaface import RetinaFaceModel, RetinaFaceNet

LEVEL_RATIO = 2.0  # scale step between pyramid levels (a level sees faces of 20-40 px at its input, and more)
TRACK_WINDOW = 2.5  # track window side, in face heights: room for 3 frames of motion the tracker did not predict
WINDOW_INPUT = 96  # track windows are resized to this: a face of ~38 px at the model, well inside its range
TILE_PX = 320  # tile side at the model's input, before overlap
SLICE_PX = 64_000  # automatic slices: about this many model input pixels per run (~8 ms on one idle Xeon core)
ALIGN = 32  # the graphs need input sides divisible by 32
MAX_UPSCALE = 2.0  # the finest level may enlarge the frame up to this much (faces below ~16 px otherwise vanish)


@dataclass(frozen=True)
class Tile:
    """Frame region [x0, x1) x [y0, y1) scanned at `scale`; `cuts`: which edges (left, top, right, bottom) are inner."""

    level: int
    scale: float
    x0: int
    y0: int
    x1: int
    y1: int
    cuts: tuple[bool, bool, bool, bool]

    @property
    def input_shape(self) -> tuple[int, int]:
        return _aligned((self.y1 - self.y0) * self.scale), _aligned((self.x1 - self.x0) * self.scale)

    @property
    def cost(self) -> int:
        """Input pixels this tile costs the model."""
        h, w = self.input_shape
        return h * w


def _aligned(n: float) -> int:
    return max(ALIGN, -(-math.ceil(n) // ALIGN) * ALIGN)


def _spans(length: int, span: int, overlap: int) -> list[tuple[int, int]]:
    """Equal pieces of `length` that overlap by at least `overlap`, each about `span` long (one if that covers it)."""
    if span * 1.25 >= length:  # one piece a bit longer than `span` is cheaper than two that overlap
        return [(0, length)]
    n = math.ceil((length - overlap) / (span - overlap))
    span = math.ceil((length - overlap) / n) + overlap
    return [(round(i * (length - span) / (n - 1)), round(i * (length - span) / (n - 1)) + span) for i in range(n)]


def scan_plan(width: int, height: int, min_face_px: float, input_size: int, face_px: float,
              tile_px: int = TILE_PX) -> list[list[Tile]]:
    """Tiles per pyramid level, finest first. The coarsest level is the whole frame in one input of ~input_size."""
    coarsest = min(1.0, input_size / max(width, height))
    scales = []
    scale = min(MAX_UPSCALE, face_px / max(min_face_px, 1.0))
    while scale > coarsest * 1.25:
        scales.append(scale)
        scale /= LEVEL_RATIO
    scales.append(coarsest)
    levels = []
    for level, scale in enumerate(scales):
        # the largest face this level must find whole (bigger ones are a coarser level's), with a margin
        overlap = math.ceil(face_px * LEVEL_RATIO * 1.5 / scale)
        span = math.ceil(tile_px / scale) + overlap
        last = level == len(scales) - 1
        rows = [(0, height)] if last else _spans(height, span, overlap)
        cols = [(0, width)] if last else _spans(width, span, overlap)
        levels.append([Tile(level, scale, x0, y0, x1, y1, (x0 > 0, y0 > 0, x1 < width, y1 < height))
                       for y0, y1 in rows for x0, x1 in cols])
    return levels


def split_slices(levels: list[list[Tile]], slices: int) -> list[list[Tile]]:
    """Deal the tiles into `slices` parts of similar cost (greedy, costliest tile first).

    With more slices than tiles some parts are empty: those runs only refresh the
    tracks, which spreads a sweep over more runs without cutting smaller tiles.
    """
    tiles = sorted((t for level in levels for t in level), key=lambda t: -t.cost)
    parts: list[list[Tile]] = [[] for _ in range(max(1, slices))]
    totals = [0] * len(parts)
    for tile in tiles:
        i = int(np.argmin(totals))
        parts[i].append(tile)
        totals[i] += tile.cost
    return parts


def track_window(box: np.ndarray) -> tuple[float, float, float]:
    """Square window (x0, y0, side) around a tracked face box, in frame pixels (may reach past the frame)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * TRACK_WINDOW
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return cx - side / 2, cy - side / 2, side


class MultiScaleDetector:
    """Pyramid + tiles + round-robin slices + windows around tracks. One instance per camera (it keeps the slice)."""

    def __init__(self, model: BlazeFaceModel | RetinaFaceModel = FULL_RANGE, min_face_px: float = 32,
                 slices: int = 0, score_threshold: float = 0.5, iou_threshold: float = 0.3, threads: int = 1,
                 near: BlazeFaceModel | None = SHORT_RANGE, near_score_threshold: float = 0.6) -> None:
        if slices < 0:
            raise ValueError(f"slices must be >= 0 (0: as many as keep each run near SLICE_PX), got {slices}")
        net = RetinaFaceNet if isinstance(model, RetinaFaceModel) else BlazeFaceNet
        self.net: BlazeFaceNet | RetinaFaceNet = net(model, score_threshold, threads)
        # whole-frame pass and track windows (None: the scan's own model does those too)
        self.near = (BlazeFaceNet(near, max(score_threshold, near_score_threshold), threads)
                     if near is not None and near != model else None)
        self.min_face_px, self.slices, self.iou_threshold = float(min_face_px), slices, iou_threshold
        self._plans: dict[tuple[int, int], list[list[Tile]]] = {}
        self._next = 0
        self.last_inputs = 0  # model input pixels of the last call (what it cost)

    @property
    def score_threshold(self) -> float:
        return self.net.score_threshold

    def plan(self, width: int, height: int) -> list[list[Tile]]:
        """The sweep for this frame size, split into `slices` parts (cached per size)."""
        key = (width, height)
        if key not in self._plans:
            size, face_px = self.net.model.input_size, self.net.model.face_px
            slices = self.slices or math.ceil(sum(
                t.cost for level in scan_plan(width, height, self.min_face_px, size, face_px)
                for t in level) / SLICE_PX)
            # small tiles split evenly but overlap more: the cheapest sweep whose dearest run stays near the
            # budget, else the plan with the cheapest dearest run
            candidates = [split_slices(scan_plan(width, height, self.min_face_px, size, face_px, tile_px), slices)
                          for tile_px in (TILE_PX, TILE_PX * 3 // 4, TILE_PX // 2)]
            dearest = [max(sum(t.cost for t in p) for p in parts) for parts in candidates]
            total = [sum(t.cost for p in parts for t in p) for parts in candidates]
            limit = max(2.5 * SLICE_PX, min(dearest)) if not self.slices else min(dearest) * 1.25
            self._plans[key] = min((c for c, d in zip(candidates, dearest, strict=True) if d <= limit),
                                   key=lambda parts: total[candidates.index(parts)])
        return self._plans[key]

    def reset(self) -> None:
        """Start over (a camera reconnect): the next run sweeps the whole frame."""
        self._next = 0

    def run(self, frame_bgr: np.ndarray, around: list[np.ndarray] | tuple = ()) -> list[Detection]:
        """One detector run of a live stream: this run's slice of the sweep plus a window around each box in
        `around` (the live tracks), merged, best first. The first run after start or `reset` sweeps everything."""
        check_frame(frame_bgr)
        h, w = frame_bgr.shape[:2]
        parts = self.plan(w, h)
        part = [t for p in parts for t in p] if self._next == 0 else parts[self._next % len(parts)]
        self._next += 1
        self.last_inputs = 0
        return merge(RawFaces.concat(self._tiles(frame_bgr, part) + self._windows(frame_bgr, around)
                                     + self._near_whole(frame_bgr, part)), self.iou_threshold)

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Every face of one image (a photo, an evaluation): the whole sweep at once; no state is kept."""
        check_frame(frame_bgr)
        h, w = frame_bgr.shape[:2]
        self.last_inputs = 0
        tiles = [t for part in self.plan(w, h) for t in part]
        return merge(RawFaces.concat(self._tiles(frame_bgr, tiles) + self._near_whole(frame_bgr, tiles)),
                     self.iou_threshold)

    def _near_whole(self, frame: np.ndarray, tiles: list[Tile]) -> list[RawFaces]:
        """With the sweep's whole-frame level: the near model on the frame letterboxed into its input."""
        h, w = frame.shape[:2]
        if self.near is None or not any(t.x0 == 0 and t.y0 == 0 and t.x1 == w and t.y1 == h for t in tiles):
            return []
        x, box = letterbox(frame, self.near.model.input_size)
        self.last_inputs += x.shape[1] * x.shape[2]
        return [self.near.run(x)[0].mapped(box.scale, -box.pad_x / box.scale, -box.pad_y / box.scale)]

    def _tiles(self, frame: np.ndarray, tiles: list[Tile]) -> list[RawFaces]:
        out: list[RawFaces] = []
        by_shape: dict[tuple[int, tuple[int, int]], list[Tile]] = {}
        for tile in tiles:  # tiles of one level share a shape: one batched call each
            by_shape.setdefault((tile.level, tile.input_shape), []).append(tile)
        for (_, (in_h, in_w)), group in by_shape.items():
            images = []
            for t in group:
                canvas = np.zeros((in_h, in_w, 3), np.uint8)
                size = (max(1, round((t.x1 - t.x0) * t.scale)), max(1, round((t.y1 - t.y0) * t.scale)))
                part = cv2.resize(frame[t.y0:t.y1, t.x0:t.x1], size, interpolation=_interpolation(t.scale))
                canvas[:part.shape[0], :part.shape[1]] = part
                images.append(canvas)
            self.last_inputs += in_h * in_w * len(images)
            for t, raw in zip(group, self.net.run(self.net.prepare(images)), strict=True):
                out.append(_drop_cut(raw.mapped(t.scale, t.x0, t.y0), t, margin=2.0 / t.scale))
        return out

    def _windows(self, frame: np.ndarray, boxes: list[np.ndarray] | tuple) -> list[RawFaces]:
        if not len(boxes):
            return []
        h, w = frame.shape[:2]
        net = self.near or self.net
        size = net.model.input_size if self.near is not None else WINDOW_INPUT
        images, windows = [], []
        for box in boxes:
            x0, y0, side = track_window(np.asarray(box, np.float32))
            scale = size / side
            canvas = np.zeros((size, size, 3), np.uint8)
            fx0, fy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
            fx1, fy1 = min(w, math.ceil(x0 + side)), min(h, math.ceil(y0 + side))
            if fx1 > fx0 and fy1 > fy0:  # crop what is inside the frame, resize, paste at its place in the window
                cx0, cy0 = max(0, round((fx0 - x0) * scale)), max(0, round((fy0 - y0) * scale))
                cw = min(size - cx0, max(1, round((fx1 - fx0) * scale)))
                ch = min(size - cy0, max(1, round((fy1 - fy0) * scale)))
                if cw > 0 and ch > 0:
                    canvas[cy0:cy0 + ch, cx0:cx0 + cw] = cv2.resize(frame[fy0:fy1, fx0:fx1], (cw, ch),
                                                                    interpolation=_interpolation(scale))
            images.append(canvas)
            windows.append((scale, x0, y0))
        self.last_inputs += size * size * len(images)
        return [raw.mapped(scale, x0, y0)
                for (scale, x0, y0), raw in zip(windows, net.run(net.prepare(images)), strict=True)]


def _interpolation(scale: float) -> int:
    """Area averaging only where bilinear would alias (below half size): it costs several times more."""
    return cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR


def _drop_cut(raw: RawFaces, tile: Tile, margin: float) -> RawFaces:
    """Candidates reaching an inner tile edge are cut faces; a neighbouring tile sees them whole."""
    keep = np.ones(len(raw.scores), bool)
    left, top, right, bottom = tile.cuts
    if left:
        keep &= raw.boxes[:, 0] > tile.x0 + margin
    if top:
        keep &= raw.boxes[:, 1] > tile.y0 + margin
    if right:
        keep &= raw.boxes[:, 2] < tile.x1 - margin
    if bottom:
        keep &= raw.boxes[:, 3] < tile.y1 - margin
    return RawFaces(raw.boxes[keep], raw.scores[keep], raw.points[keep])
