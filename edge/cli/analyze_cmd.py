"""`affect-sensor analyze FILE...`: the daemon's pipeline on photos, videos and folders, for people trying it
out and for researchers who want a per-frame table (`--csv`), annotated copies (`--annotate`) and a plot
(`--plot`); docs/analyze.md describes the outputs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy modules load inside the handler, so `--help` stays fast
    from edge.analysis.inputs import InputItem
    from edge.analysis.plot import PlotCollector
    from edge.analysis.progress import Progress
    from edge.analysis.table import CsvTable
    from edge.pipeline.processor import FrameProcessor
    from edge.publish.payloads import ResultRecord


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="run the pipeline on photos, videos or folders of photos: per-face results, "
                                       "an OpenFace-style CSV, annotated copies, a plot")
    p.add_argument("files", nargs="+", type=Path, metavar="IMAGE_VIDEO_OR_FOLDER")
    p.add_argument("--config", type=Path, default=None, help="device TOML (bundle, detection settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="one JSON result record per frame on stdout")
    p.add_argument("--csv", type=Path, default=None, metavar="OUT.csv",
                   help="one row per face per frame, OpenFace 2.0 column names (docs/analyze.md)")
    p.add_argument("--annotate", type=Path, default=None, metavar="DIR",
                   help="write copies with box, track id, top expression and active-AU bars into DIR")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                   help="expression and key-AU probabilities over time per track (needs matplotlib)")
    p.add_argument("--face-crops", action="store_true",
                   help="the photos are tight face crops (e.g. FER2013): add a border so the detector sees a face "
                        "(docs/analyze.md); boxes are reported in the photo's own pixels")
    p.set_defaults(func=_analyze)


def _check_file_output(path: Path | None, flag: str, items: Sequence[InputItem]) -> None:
    from edge.analysis import AnalysisError
    from edge.analysis.media import check_not_input

    if path is None:
        return
    if path.is_dir():
        raise AnalysisError(f"{flag} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise AnalysisError(f"{flag} {path}: folder {path.parent} does not exist")
    check_not_input(path, items, flag)


def _analyze(args: argparse.Namespace) -> int:
    from edge.analysis import AnalysisError
    from edge.cli.app import CLIError

    try:
        return _run(args)
    except AnalysisError as exc:
        raise CLIError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from edge.analysis.inputs import expand_inputs
    from edge.analysis.media import plan_annotations
    from edge.analysis.plot import PlotCollector, require_matplotlib
    from edge.analysis.progress import Progress
    from edge.analysis.table import CsvTable
    from edge.config import load_config
    from edge.pipeline.daemon import open_processor

    if args.plot is not None:
        require_matplotlib()  # before minutes of video, not after
    items = expand_inputs(args.files)
    _check_file_output(args.csv, "--csv", items)
    _check_file_output(args.plot, "--plot", items)
    annotated = plan_annotations(items, args.annotate) if args.annotate is not None else {}
    files_out = args.csv is not None or args.annotate is not None or args.plot is not None
    per_face_text = not args.json and not files_out  # the original one-line-per-face report

    # A photo is its own scene: detect on every one, over the whole frame in one sweep (the daemon spreads a
    # sweep over several frames), and never smooth across files.
    still_overrides = ["detection.every_k_frames=1", "detection.scan_slices=1", 'head.smoothing="none"']
    processors = {}
    for still in sorted({item.still for item in items}):
        config = load_config(args.config, [*args.overrides, *(still_overrides if still else [])])
        processors[still] = open_processor(config, selftest=False)
    labels = next(iter(processors.values())).labels

    unknown_total = any(not item.still and item.frames is None for item in items)
    total = None if unknown_total else sum(1 if item.still else item.frames or 0 for item in items)
    # Per-face lines on the same terminal would tear the bar apart; they are progress enough.
    progress = Progress(total, enabled=sys.stderr.isatty() and not (per_face_text and sys.stdout.isatty()))
    notes: list[str] = []
    with ExitStack() as stack:
        table = CsvTable(args.csv, labels) if args.csv is not None else None
        if table is not None:
            stack.callback(table.discard)  # a no-op once committed
        plot = PlotCollector(labels) if args.plot is not None else None
        stack.callback(progress.close)
        photos_written = 0
        for item in items:
            photos_written += _analyze_item(item, processors[item.still], args, per_face_text, table, plot,
                                            annotated.get(item.path), progress, notes)
        progress.close()
        if table is not None:
            table.commit()
            notes.append(f"wrote {table.path} ({table.rows} rows, {len(table.spec.columns)} columns)")
        if plot is not None:
            summary = plot.render(args.plot)
            shown = f", the longest {summary.shown} drawn" if summary.shown < summary.tracks else ""
            plural = "" if summary.tracks == 1 else "s"
            notes.append(f"wrote {summary.path} ({summary.tracks} track{plural}{shown})")
        if photos_written:
            notes.append(f"wrote {photos_written} annotated photo(s) under {args.annotate}")
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def _analyze_item(item: InputItem, processor: FrameProcessor, args: argparse.Namespace, per_face_text: bool,
                  table: CsvTable | None, plot: PlotCollector | None, annotated: Path | None, progress: Progress,
                  notes: list[str]) -> int:
    """Every frame of one input through the pipeline and into the outputs; returns annotated photos written."""
    from edge.analysis.annotate import draw_faces
    from edge.analysis.inputs import UnreadableImage, read_frames
    from edge.analysis.media import FALLBACK_FPS, VideoOut, write_image
    from edge.analysis.observation import FrameObservation

    if not item.still:
        processor.reset_tracks()
    video: VideoOut | None = None
    photos = 0
    try:
        for index, seconds, image in read_frames(item):
            record = _process(processor, image, index, args.face_crops and item.still)
            obs = FrameObservation(str(item.path), index + 1, seconds, tuple(record.faces))
            if table is not None:
                table.write(obs)
            if plot is not None:
                plot.add(obs, item.still)
            if annotated is not None:
                drawn = draw_faces(image, obs.faces)
                if item.still:
                    write_image(annotated, drawn)
                    photos += 1
                else:
                    if video is None:
                        if item.fps is None:
                            notes.append(f"{item.path}: the file states no frame rate; annotated at "
                                         f"{FALLBACK_FPS:g} fps")
                        video = VideoOut(annotated, item.fps or FALLBACK_FPS, (image.shape[1], image.shape[0]))
                    video.write(drawn)
            if args.json:
                print(json.dumps({"file": str(item.path), **record.model_dump(mode="json", exclude_none=True)}))
            elif per_face_text:
                _print_faces(item, index, record)
            progress.advance()
    except UnreadableImage as exc:
        if item.folder is None:
            raise
        notes.append(f"skipped {exc}")  # one bad photo must not cost a folder's run
        progress.advance()
    except BaseException:
        if video is not None:
            video.discard()
        raise
    if video is not None:
        video.commit()
        notes.append(f"wrote {video.path} ({video.frames} frames, {video.fps:g} fps)")
    return photos


def _process(processor: FrameProcessor, image, index: int, face_crop: bool) -> ResultRecord:
    """One frame; a tight face crop runs on its bordered frame, its boxes mapped back to the photo."""
    if not face_crop:
        return processor.process(image, index).record
    import numpy as np

    from edge.analysis.face_crops import face_crop_frame

    framed = face_crop_frame(image)
    record = processor.process(framed.frame, index).record
    faces = []
    for face in record.faces:
        b = face.box
        (x1, y1), (x2, y2) = framed.to_photo(np.array([[b.x, b.y], [b.x + b.w, b.y + b.h]]))
        box = b.model_copy(update={"x": float(x1), "y": float(y1), "w": float(x2 - x1), "h": float(y2 - y1)})
        faces.append(face.model_copy(update={"box": box}))
    return record.model_copy(update={"faces": faces})


def _print_faces(item: InputItem, index: int, record: ResultRecord) -> None:
    where = f"{item.path}" if item.still else f"{item.path} frame {index}"
    if not record.faces:
        print(f"{where}: no face found")
    for face in record.faces:
        box = face.box
        aus = ", ".join(face.active_aus) or "none"
        print(f"{where}: face {face.track_id} at ({box.x:.0f},{box.y:.0f} {box.w:.0f}x{box.h:.0f}) "
              f"{face.top_expression} {face.top_score:.2f}; active AUs: {aus}")
