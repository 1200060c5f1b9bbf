"""Built-in demo source: a real face (edge/assets, CC BY 4.0, see NOTICE.txt) moving gently in a 640x480 frame.

It needs no camera and no files, so `uri = "demo"` exercises the whole
pipeline: the face drifts and breathes in scale (the tracker has something to
follow) and switches between a neutral and a smiling photo of the same person
every `expression_period_s` (the model has an expression change to report).

`uri = "demo:N"` is a room instead: N faces at several sizes (the largest ~4x
the smallest, from 1/20 of the frame height), each drifting in its own cell of a
grid and switching expression with its own phase. It renders the shipped photo
pair; `render_scene` also takes other neutral/smiling pairs, e.g. the London
set (`load_photo_pairs`), which is what `affect-sensor bench --photos` uses.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.capture.frame import Frame, SourceError
from edge.config.models import SourceConfig

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_PHOTOS = ("demo_neutral.jpg", "demo_smile.jpg")


def load_demo_photos() -> list[np.ndarray]:
    photos = []
    for name in DEMO_PHOTOS:
        image = cv2.imread(str(ASSETS / name), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"demo asset {ASSETS / name} is missing or unreadable (it ships with the package)")
        photos.append(image)
    return photos


def render_demo_frame(photos: list[np.ndarray], t: float, width: int, height: int,
                      expression_period_s: float = 2.0) -> np.ndarray:
    """The demo frame at time `t` seconds: pure function of t, so tests can predict it."""
    photo = photos[int(t // expression_period_s) % len(photos)]
    base = 0.75 * min(width, height) / photo.shape[0]
    scale = base * (1.0 + 0.08 * math.sin(2 * math.pi * t / 5.0))
    cx = width / 2 + 0.10 * width * math.sin(2 * math.pi * t / 7.0)
    cy = height / 2 + 0.05 * height * math.sin(2 * math.pi * t / 3.0)
    ph, pw = photo.shape[:2]
    matrix = np.array([[scale, 0, cx - scale * pw / 2], [0, scale, cy - scale * ph / 2]], np.float32)
    background = tuple(int(v) for v in photo[:8, :8].reshape(-1, 3).mean(axis=0))
    return cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=background)


# Face box height over photo height for BlazeFace on the shipped and London photos (measured: 0.35-0.49).
FACE_PER_PHOTO = 0.40


@dataclass(frozen=True)
class SceneSpec:
    """N faces in a width x height frame, face heights spread geometrically from `smallest` to `largest` x height."""

    width: int
    height: int
    faces: int
    smallest: float = 0.05
    largest: float = 0.20

    def face_heights(self) -> list[float]:
        if self.faces == 1:
            return [self.largest * self.height]
        ratio = (self.largest / self.smallest) ** (1 / (self.faces - 1))
        return [self.smallest * self.height * ratio**i for i in range(self.faces)]


def load_photo_pairs(folder: Path | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(neutral, smiling) photo pairs: the shipped pair, or every NNN_03/NNN_08 pair of a London-set folder."""
    if folder is None:
        neutral, smile = load_demo_photos()
        return [(neutral, smile)]
    pairs = []
    for neutral_path in sorted(Path(folder).glob("*_03.jpg")):
        smile_path = neutral_path.with_name(neutral_path.name.replace("_03.jpg", "_08.jpg"))
        neutral, smile = cv2.imread(str(neutral_path)), cv2.imread(str(smile_path))
        if neutral is not None and smile is not None:
            pairs.append((neutral, smile))
    if not pairs:
        raise SourceError(f"{folder}: no NNN_03.jpg / NNN_08.jpg photo pairs")
    return pairs


def render_scene(pairs: list[tuple[np.ndarray, np.ndarray]], spec: SceneSpec, t: float,
                 expression_period_s: float = 2.0) -> np.ndarray:
    """The room at time `t`: a pure function of t. Face i uses pair i (cycling), largest faces in the top row."""
    cols = max(1, math.ceil(math.sqrt(spec.faces * spec.width / spec.height)))
    rows = math.ceil(spec.faces / cols)
    cell_w, cell_h = spec.width / cols, spec.height / rows
    frame = np.empty((spec.height, spec.width, 3), np.uint8)
    frame[:] = np.linspace(150, 90, spec.height, dtype=np.float32).astype(np.uint8)[:, None, None]
    for i, face_h in enumerate(sorted(spec.face_heights(), reverse=True)):
        neutral, smile = pairs[i % len(pairs)]
        photo = (neutral, smile)[int(t / expression_period_s + 0.37 * i) % 2]
        scale = face_h / (FACE_PER_PHOTO * photo.shape[0]) * (1.0 + 0.05 * math.sin(2 * math.pi * t / 5.0 + i))
        row, col = divmod(i, cols)
        drift = min(cell_w, cell_h) * 0.15
        cx = (col + 0.5) * cell_w + drift * math.sin(2 * math.pi * t / 7.0 + 1.3 * i)
        cy = (row + 0.5) * cell_h + drift * 0.5 * math.sin(2 * math.pi * t / 3.0 + 0.7 * i)
        size = max(2, round(photo.shape[0] * scale))
        small = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        x0, y0 = round(cx - size / 2), round(cy - size / 2)
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(spec.width, x0 + size), min(spec.height, y0 + size)
        if fx1 > fx0 and fy1 > fy0:
            frame[fy0:fy1, fx0:fx1] = small[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    return frame


class DemoSource:
    live = True

    def __init__(self, config: SourceConfig, realtime: bool = True, expression_period_s: float = 2.0,
                 faces: int | None = None) -> None:
        self.config, self.realtime, self.expression_period_s = config, realtime, expression_period_s
        self.faces = faces
        self.description = "built-in demo" if faces is None else f"built-in demo room ({faces} faces)"
        self._photos: list[np.ndarray] = []
        self._index = 0
        self._start = 0.0

    def open(self) -> None:
        self._photos = load_demo_photos()
        self._index = 0
        self._start = time.monotonic()

    def read(self) -> Frame | None:
        if not self._photos:
            raise SourceError("demo source is not open")
        t = self._index / self.config.fps  # scene time follows the frame count, so it is reproducible
        if self.realtime:
            delay = self._start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if self.faces is None:
            image = render_demo_frame(self._photos, t, self.config.width, self.config.height,
                                      self.expression_period_s)
        else:
            spec = SceneSpec(self.config.width, self.config.height, self.faces)
            image = render_scene([(self._photos[0], self._photos[1])], spec, t, self.expression_period_s)
        frame = Frame(image, self._index, time.monotonic(), self.description)
        self._index += 1
        return frame

    def close(self) -> None:
        self._photos = []
