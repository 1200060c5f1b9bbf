"""Per-stage times of the capture front half on 640x480 frames (capture read, detect, track, align).

    python tools/bench_capture.py [--frames 300] [--source demo|video]

"video" writes a 640x480 MJPG clip of the demo scene to a temp dir first, so the
read time is a real decode. Detection runs on every frame here (every_k_frames=1)
to time it; the daemon runs it every k-th frame. One onnxruntime thread.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge.capture import open_source
from edge.capture.demo import load_demo_photos, render_demo_frame
from edge.config.models import DetectionConfig, SourceConfig
from edge.detection import BlazeFaceDetector
from edge.tracking import FaceFrontEnd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--source", choices=["demo", "video"], default="video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.source == "video":
            path = Path(tmp) / "demo.avi"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
            photos = load_demo_photos()
            for i in range(args.frames):
                writer.write(render_demo_frame(photos, i / 30, 640, 480))
            writer.release()
            source = open_source(SourceConfig(uri=str(path)))
        else:
            source = open_source(SourceConfig(uri="demo"))
            source.realtime = False
        front = FaceFrontEnd(BlazeFaceDetector(threads=1), DetectionConfig(every_k_frames=1))
        source.open()
        rows = []
        while len(rows) < args.frames:
            t0 = time.perf_counter()
            frame = source.read()
            read_ms = (time.perf_counter() - t0) * 1e3
            if frame is None:
                break
            result = front.process(frame.image)
            rows.append((read_ms, result.times.detect_ms, result.times.track_ms, result.times.align_ms,
                         len(result.faces)))
        source.close()
    data = np.array(rows[10:])  # skip warm-up
    print(f"{len(data)} frames 640x480 from {args.source}; faces per frame {data[:, 4].mean():.2f}")
    for col, name in enumerate(["capture read", "detect (incl. gate)", "track", "align (112 crop)"]):
        p50, p95 = np.percentile(data[:, col], [50, 95])
        print(f"  {name:22s} mean {data[:, col].mean():6.2f} ms  p50 {p50:6.2f}  p95 {p95:6.2f}")


if __name__ == "__main__":
    main()
