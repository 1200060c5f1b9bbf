"""Photos and videos made from the built-in demo face (edge/assets), for the docs' pictures and for tests:
real media anyone can regenerate, with no camera and no downloads.

    python -m edge.analysis.demo_media OUT_DIR    # OUT_DIR/demo.mp4 (8 s, 15 fps) and OUT_DIR/demo_frame.jpg
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from edge.analysis.atomic import AtomicOutput, file_mode
from edge.capture.demo import load_demo_photos, render_demo_frame
from edge.fsutil import atomic_write

SIZE = (640, 480)
SMILE_T = 3.0  # the demo shows the smiling photo from 2 s to 4 s


def demo_frames(seconds: float, fps: float, size: tuple[int, int] = SIZE) -> Iterator[np.ndarray]:
    """The demo source's frames at `fps` (neutral and smiling photo alternating every 2 s)."""
    photos = load_demo_photos()
    for i in range(round(seconds * fps)):
        yield render_demo_frame(photos, i / fps, size[0], size[1])


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """MP4 (mp4v) of `frames`, all one size; returns how many were written."""
    count = 0
    writer = None
    with AtomicOutput(path) as out:
        try:
            for frame in frames:
                if writer is None:
                    size = (frame.shape[1], frame.shape[0])
                    writer = cv2.VideoWriter(str(out.temp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                    if not writer.isOpened():
                        raise RuntimeError(f"{path}: OpenCV cannot write mp4v video here")
                writer.write(frame)
                count += 1
        finally:
            if writer is not None:
                writer.release()
        if writer is None:
            raise ValueError(f"{path}: no frames to write")
        out.commit()
    return count


def write_still(path: Path, t: float = SMILE_T, size: tuple[int, int] = SIZE) -> None:
    ok, data = cv2.imencode(path.suffix, render_demo_frame(load_demo_photos(), t, size[0], size[1]))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode {path.suffix} images")
    atomic_write(path, data.tobytes(), mode=file_mode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.analysis.demo_media", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    frames = write_video(args.out_dir / "demo.mp4", demo_frames(args.seconds, args.fps), args.fps)
    write_still(args.out_dir / "demo_frame.jpg")
    print(f"wrote {args.out_dir / 'demo.mp4'} ({frames} frames, {args.fps:g} fps) and "
          f"{args.out_dir / 'demo_frame.jpg'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
