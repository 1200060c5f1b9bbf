"""Where annotated copies go and how they are written: photos in their own format, videos as MP4 at the input's
frame rate, each appearing only when complete, and never over an input.

Names: `<DIR>/<stem>_annotated<suffix>` for a photo or video named on the
command line (videos always `.mp4`, grey-only `.pgm` as `.png`), `<DIR>/<folder name>/...` for the photos
of a folder, so two folders with a `001.jpg` each do not collide.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge.analysis import AnalysisError
from edge.analysis.atomic import AtomicOutput, file_mode
from edge.analysis.inputs import InputItem
from edge.fsutil import atomic_write

VIDEO_SUFFIX = ".mp4"
VIDEO_FOURCC = "mp4v"  # MPEG-4 Part 2: the encoder every OpenCV wheel ships, played by browsers' players and VLC
FALLBACK_FPS = 30.0  # only for a video whose container states no frame rate
GREY_ONLY = {".pgm": ".png"}  # formats that cannot hold coloured drawings, and what is written instead


def annotated_path(item: InputItem, out_dir: Path) -> Path:
    suffix = GREY_ONLY.get(item.path.suffix.lower(), item.path.suffix) if item.still else VIDEO_SUFFIX
    folder = out_dir / item.folder.name if item.folder is not None else out_dir
    return folder / f"{item.path.stem}_annotated{suffix}"


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_not_input(output: Path, items: Sequence[InputItem], what: str) -> None:
    """Refuse an output path that is one of the inputs: analysing must never destroy what it reads."""
    for item in items:
        if _same(output, item.path):
            raise AnalysisError(f"{what} {output} is the input {item.path}; choose another path")


def plan_annotations(items: Sequence[InputItem], out_dir: Path) -> dict[Path, Path]:
    """Input path -> annotated output path, checked for collisions and inputs before any work."""
    if out_dir.exists() and not out_dir.is_dir():
        raise AnalysisError(f"--annotate {out_dir}: exists and is not a folder")
    plan: dict[Path, Path] = {}
    taken: dict[Path, Path] = {}
    for item in items:
        target = annotated_path(item, out_dir)
        check_not_input(target, items, "--annotate output")
        key = target.resolve()
        if key in taken:
            raise AnalysisError(f"--annotate: {taken[key]} and {item.path} would both be written to {target}; "
                                "rename one or analyse them in separate runs")
        taken[key] = item.path
        plan[item.path] = target
    return plan


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode in the format the suffix names (as the input had) and replace `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise AnalysisError(f"{path}: OpenCV cannot encode {path.suffix} images")
    atomic_write(path, data.tobytes(), mode=file_mode())


class VideoOut:
    """MP4 written frame by frame to a temp file beside the target; `commit()` renames it into place."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.size, self.frames = path, fps, size, 0
        self._out = AtomicOutput(path)
        self._writer = cv2.VideoWriter(str(self._out.temp), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, size)
        if not self._writer.isOpened():
            self._out.discard()
            raise AnalysisError(f"{path}: OpenCV cannot write {VIDEO_FOURCC} video here")

    def write(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self.size:  # the writer would silently drop such a frame
            image = cv2.resize(image, self.size)
        self._writer.write(image)
        self.frames += 1

    def commit(self) -> None:
        self._writer.release()
        self._out.commit()

    def discard(self) -> None:
        self._writer.release()
        self._out.discard()
