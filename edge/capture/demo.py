"""Built-in demo source: a real face (edge/assets, CC BY 4.0, see NOTICE.txt) moving gently in a 640x480 frame.

It needs no camera and no files, so `uri = "demo"` exercises the whole
pipeline: the face drifts and breathes in scale (the tracker has something to
follow) and switches between a neutral and a smiling photo of the same person
every `expression_period_s` (the model has an expression change to report).
"""

from __future__ import annotations

import math
import time
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


class DemoSource:
    live = True

    def __init__(self, config: SourceConfig, realtime: bool = True, expression_period_s: float = 2.0) -> None:
        self.config, self.realtime, self.expression_period_s = config, realtime, expression_period_s
        self.description = "built-in demo"
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
        image = render_demo_frame(self._photos, t, self.config.width, self.config.height, self.expression_period_s)
        frame = Frame(image, self._index, time.monotonic(), self.description)
        self._index += 1
        return frame

    def close(self) -> None:
        self._photos = []
