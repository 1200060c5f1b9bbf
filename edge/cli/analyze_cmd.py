"""`affect-sensor analyze FILE...`: the daemon's pipeline on photos and videos, for people trying it out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="run the pipeline on image or video files and print per-face results")
    p.add_argument("files", nargs="+", type=Path, metavar="IMAGE_OR_VIDEO")
    p.add_argument("--config", type=Path, default=None, help="device TOML (bundle, detection settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="one JSON result record per frame")
    p.set_defaults(func=_analyze)


def _frames(path: Path):
    import cv2

    from edge.cli.app import CLIError

    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CLIError(f"{path}: not a readable image")
        yield image
        return
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise CLIError(f"{path}: not a readable video (or unknown image type)")
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            yield image
    finally:
        capture.release()


def _analyze(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.pipeline.daemon import open_processor

    # A photo is its own scene: detect on every one and never smooth across files.
    still_overrides = ["detection.every_k_frames=1", 'head.smoothing="none"']
    processors = {}
    for path in args.files:
        still = path.suffix.lower() in IMAGE_SUFFIXES
        if still not in processors:
            config = load_config(args.config, [*args.overrides, *(still_overrides if still else [])])
            processors[still] = open_processor(config, selftest=False)
        processor = processors[still]
        if not still:
            processor.reset_tracks()
        for index, image in enumerate(_frames(path)):
            record = processor.process(image, index).record
            if args.json:
                print(json.dumps({"file": str(path), **record.model_dump(mode="json", exclude_none=True)}))
                continue
            where = f"{path}" if still else f"{path} frame {index}"
            if not record.faces:
                print(f"{where}: no face found")
            for face in record.faces:
                box = face.box
                aus = ", ".join(face.active_aus) or "none"
                print(f"{where}: face {face.track_id} at ({box.x:.0f},{box.y:.0f} {box.w:.0f}x{box.h:.0f}) "
                      f"{face.top_expression} {face.top_score:.2f}; active AUs: {aus}")
    return 0
