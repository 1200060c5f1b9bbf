"""`affect-sensor bench`: stage latencies, fps, CPU at the camera's rate, memory, model sizes, INT8/FP32, accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the pipeline, the model lowerings and the head on this machine")
    p.add_argument("--config", type=Path, default=None, help="device TOML (bundle, backend, threads, detector)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--video", type=Path, default=None, help="video to run (default: built-in demo frames)")
    p.add_argument("--faces", type=int, default=None,
                   help="a demo room of N faces at several sizes instead of the one-face demo (frame size: "
                        "source.width/height, e.g. --set source.width=1920 --set source.height=1080)")
    p.add_argument("--photos", type=Path, default=None,
                   help="neutral/smiling pairs (NNN_03.jpg/NNN_08.jpg, e.g. the London set) for the room's faces")
    p.add_argument("--frames", type=int, default=300, help="frames to process back to back (default 300)")
    p.add_argument("--paced-frames", type=int, default=150,
                   help="frames processed at the source's rate (source.fps) for CPU per frame; 0: skip (default 150)")
    p.add_argument("--iterations", type=int, default=300, help="inferences per model lowering (default 300)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from edge.config import load_config
    from edge.head.bench import bench_numpy_head
    from edge.pipeline.bench import (
        accuracy_retention,
        bench_lowerings,
        bench_pipeline,
        bundle_summary,
        load_frames,
        machine,
        paced_cpu,
        room_frames,
    )
    from edge.pipeline.daemon import open_processor

    if args.frames < 1 or args.iterations < 1 or args.paced_frames < 0:
        raise CLIError("--frames and --iterations must be at least 1, --paced-frames at least 0")
    if args.faces is not None and (args.faces < 1 or args.video is not None):
        raise CLIError("--faces needs a number of at least 1 and no --video")
    config = load_config(args.config, args.overrides)
    processor = open_processor(config, selftest=False)
    src = config.source
    try:
        if args.faces is not None:
            frames = room_frames(args.faces, max(args.frames, args.paced_frames), src.width, src.height, args.photos,
                                 src.fps)
            capture_ms = frames.render_ms
            source = f"demo room, {args.faces} faces (frame render)"
        else:
            frames, capture_ms = load_frames(args.video, args.frames, src.width, src.height)
            source = f"video decode ({args.video.name})" if args.video else "built-in demo (frame render)"
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    peak = frames if args.faces is None else _first(frames, args.frames)
    detector = getattr(getattr(processor.front.detector, "net", None), "model", None)
    results = {
        "machine": machine(),
        "bundle": bundle_summary(processor.bundle, detector.path if detector is not None else None),
        "backend": processor.backend.describe(),
        "head_backend": processor.head.backend,
        "threads": config.model.threads,
        "detector": _describe_detector(config),
        "lowerings": bench_lowerings(processor.bundle, config.model.threads, iterations=args.iterations),
        "pipeline": bench_pipeline(processor, peak, capture_ms, source),
        "paced": paced_cpu(processor, frames, src.fps, args.paced_frames) if args.paced_frames else None,
        "head": [vars(row) for row in bench_numpy_head(params=processor.params)],
        "accuracy": accuracy_retention(processor.bundle.manifest),
    }
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


class _first:
    """The first `n` frames of a frame sequence (rendered on demand)."""

    def __init__(self, frames, n: int) -> None:
        self.frames, self.n = frames, min(n, len(frames))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.frames[i]


def _describe_detector(config) -> str:
    d = config.detection
    if d.detector == "whole_frame":
        return f"short-range BlazeFace on the whole frame, every {d.every_k_frames} frames"
    slices = d.scan_slices or "auto"
    model = "RetinaFace" if d.detector == "retinaface" else f"{d.detector.replace('_', '-')} BlazeFace"
    return (f"{model} scan down to {d.min_face_px} px faces, one of "
            f"{slices} slices plus a window per track every {d.every_k_frames} frames")


def render(r: dict) -> str:
    from edge.pipeline.bench import machine_line, retention_table, size_table, stage_table

    b, low, pipe = r["bundle"], r["lowerings"], r["pipeline"]
    lines = [machine_line(r["machine"]),
             f"bundle: {b['name']} {b['version']} (build {b['build']}, created {b['created']}); "
             f"backend {r['backend']}; head {r['head_backend']}",
             f"detector: {r['detector']}", "",
             f"pipeline: {pipe['frames']} frames {pipe['size']} from the {pipe['capture_source']}, "
             f"{pipe['faces_per_frame']:.2f} faces/frame, detector every {pipe['detector_every_k_frames']} frames",
             f"  processed {pipe['processed_fps']:.1f} fps (loop: detect..publish); "
             f"{pipe['serial_fps_with_capture']:.1f} fps with capture in the same thread; "
             f"RSS {pipe['rss_mb']:.0f} MB (peak {pipe['peak_rss_mb']:.0f} MB)",
             *stage_table(pipe),
             f"  (detect: frames where the detector ran, {pipe['detect_ms_per_frame_amortised']:.3f} ms per frame "
             "amortised; capture runs on the daemon's capture thread, beside the loop; frame = detect..publish)"]
    paced = r.get("paced")
    if paced:
        lines += [f"  at the source's rate ({paced['fps']:g} fps, {paced['frames']} frames): CPU "
                  f"{paced['cpu_ms_per_frame']:.2f} ms per processed frame, {paced['cpu_percent_of_core']:.0f}% of one "
                  f"core; {paced['processed']} processed, {paced['dropped']} dropped (all threads of the process; "
                  f"not counted: making the frames, {paced['feeder_cpu_ms_per_frame']:.2f} ms each on a feeder "
                  "thread, the daemon's capture thread)"]
    lines += ["",
              f"model lowerings (batch {low['batch']}, {low['threads']} threads, {low['iterations']} runs in rotating "
              "blocks), ms per inference:",
              f"  {'graph':<12}{'file':<22}{'KB':>8}{'mean':>9}{'p50':>9}{'p95':>9}"]
    for role, g in low["graphs"].items():
        lines.append(f"  {role:<12}{g['file']:<22}{g['bytes'] / 1024:>8.0f}{g['mean']:>9.3f}{g['p50']:>9.3f}"
                     f"{g['p95']:>9.3f}")
    if "int8_speedup_vs_fp32" in low:
        lines.append(f"  INT8 (CPU lowering) vs FP32 speed-up at p50: {low['int8_speedup_vs_fp32']:.2f}x")
    lines += ["", f"model sizes (bundle total {b['total_bytes'] / 2**20:.2f} MB):", *size_table(b), "",
              "accuracy retention, teacher -> FP32 student -> INT8 student (from the bundle manifest):",
              *retention_table(r["accuracy"]), "",
              "semantic head (NumPy path), microseconds:",
              f"  {'stage':<18}{'batch':>6}{'mean':>9}{'p50':>9}{'p99':>9}"]
    for row in r["head"]:
        lines.append(f"  {row['stage']:<18}{row['batch']:>6}{row['mean_us']:>9.1f}{row['p50_us']:>9.1f}"
                     f"{row['p99_us']:>9.1f}")
    return "\n".join(lines)
