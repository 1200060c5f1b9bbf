"""The files `analyze` was given, expanded and typed: photos, videos, and folders of photos.

A folder stands for its photos in name order, as the daemon's folder source
reads it; anything else in it is ignored. Videos are probed up front for their
frame rate and frame count, so progress has a total and a bad file fails
before any work is done.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edge.analysis import AnalysisError
from edge.capture.sources import IMAGE_SUFFIXES


class UnreadableImage(AnalysisError):
    """A photo OpenCV cannot decode: fatal when named on the command line, skipped inside a folder."""


@dataclass(frozen=True)
class InputItem:
    path: Path
    kind: Literal["image", "video"]
    folder: Path | None = None  # the folder argument it came from, if any
    fps: float | None = None  # videos: the container's frame rate; None when it gives none
    frames: int | None = None  # videos: the container's frame count (an estimate for some codecs)

    @property
    def still(self) -> bool:
        return self.kind == "image"


def expand_inputs(paths: Sequence[Path]) -> list[InputItem]:
    """Every file to analyse, in command-line order; folders expand to their photos sorted by name."""
    items: list[InputItem] = []
    for path in paths:
        if path.is_dir():
            photos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not photos:
                raise AnalysisError(f"{path}: folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            items += [InputItem(p, "image", folder=path) for p in photos]
        elif not path.is_file():
            raise AnalysisError(f"{path}: no such file or folder")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            items.append(InputItem(path, "image"))
        else:
            items.append(_probe_video(path))
    return items


def _probe_video(path: Path) -> InputItem:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise AnalysisError(f"{path}: not a readable video (or unknown image type)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        capture.release()
    fps_ok = math.isfinite(fps) and 0 < fps < 1000
    count_ok = math.isfinite(count) and count > 0
    return InputItem(path, "video", fps=float(fps) if fps_ok else None, frames=int(count) if count_ok else None)


def read_frames(item: InputItem) -> Iterator[tuple[int, float, np.ndarray]]:
    """(0-based index, seconds from the start, BGR image) for each frame; a photo is one frame at 0 s."""
    if item.still:
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:
            raise UnreadableImage(f"{item.path}: not a readable image")
        yield 0, 0.0, image
        return
    capture = cv2.VideoCapture(str(item.path))
    if not capture.isOpened():
        raise AnalysisError(f"{item.path}: not a readable video")
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            # The frame rate gives exact, reproducible times; without one, trust the container's clock.
            seconds = index / item.fps if item.fps else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
            yield index, seconds, image
            index += 1
    finally:
        capture.release()
