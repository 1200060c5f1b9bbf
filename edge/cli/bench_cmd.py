"""`affect-sensor bench`: stage latencies, fps, memory, model sizes, INT8 vs FP32 and accuracy, on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the pipeline, the model lowerings and the head on this machine")
    p.add_argument("--config", type=Path, default=None, help="device TOML (bundle, backend, threads)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--video", type=Path, default=None, help="video to run (default: 640x480 built-in demo frames)")
    p.add_argument("--frames", type=int, default=300, help="frames to process (default 300)")
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
    )
    from edge.pipeline.daemon import open_processor

    if args.frames < 1 or args.iterations < 1:
        raise CLIError("--frames and --iterations must be at least 1")
    config = load_config(args.config, args.overrides)
    processor = open_processor(config, selftest=False)
    try:
        frames, capture_ms = load_frames(args.video, args.frames, config.source.width, config.source.height)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    source = f"video decode ({args.video.name})" if args.video else "built-in demo (frame render)"
    results = {
        "machine": machine(),
        "bundle": bundle_summary(processor.bundle),
        "backend": processor.backend.describe(),
        "head_backend": processor.head.backend,
        "threads": config.model.threads,
        "lowerings": bench_lowerings(processor.bundle, config.model.threads, iterations=args.iterations),
        "pipeline": bench_pipeline(processor, frames, capture_ms, source),
        "head": [vars(row) for row in bench_numpy_head(params=processor.params)],
        "accuracy": accuracy_retention(processor.bundle.manifest),
    }
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


def render(r: dict) -> str:
    from edge.pipeline.bench import machine_line, retention_table, size_table, stage_table

    b, low, pipe = r["bundle"], r["lowerings"], r["pipeline"]
    lines = [machine_line(r["machine"]),
             f"bundle: {b['name']} {b['version']} (build {b['build']}, created {b['created']}); "
             f"backend {r['backend']}; head {r['head_backend']}", "",
             f"pipeline: {pipe['frames']} frames {pipe['size']} from the {pipe['capture_source']}, "
             f"{pipe['faces_per_frame']:.2f} faces/frame, detector every {pipe['detector_every_k_frames']} frames",
             f"  processed {pipe['processed_fps']:.1f} fps (loop: detect..publish); "
             f"{pipe['serial_fps_with_capture']:.1f} fps with capture in the same thread; "
             f"RSS {pipe['rss_mb']:.0f} MB (peak {pipe['peak_rss_mb']:.0f} MB)",
             *stage_table(pipe),
             f"  (detect: frames where the detector ran, {pipe['detect_ms_per_frame_amortised']:.3f} ms per frame "
             "amortised; capture runs on the daemon's capture thread, beside the loop; frame = detect..publish)", "",
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
