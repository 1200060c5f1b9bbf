"""`affect-sensor bench`: per-stage latency, processed fps, model lowerings and the head, on this machine."""

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
    from edge.config import load_config
    from edge.head.bench import bench_numpy_head
    from edge.pipeline.bench import bench_lowerings, bench_pipeline, load_frames, machine
    from edge.pipeline.daemon import open_processor

    config = load_config(args.config, args.overrides)
    processor = open_processor(config, selftest=False)
    frames, decode = load_frames(args.video, args.frames, config.source.width, config.source.height)
    results = {
        "machine": machine(),
        "bundle": processor.bundle_ref.model_dump(),
        "backend": processor.backend.describe(),
        "head_backend": processor.head.backend,
        "lowerings": bench_lowerings(processor.bundle, config.model.threads, iterations=args.iterations),
        "pipeline": bench_pipeline(processor, frames, decode),
        "head": [vars(row) for row in bench_numpy_head(params=processor.params)],
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render(results))
    return 0


def render(r: dict) -> str:
    m, low, pipe = r["machine"], r["lowerings"], r["pipeline"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; python {m['python']}, "
             f"onnxruntime {m['onnxruntime']}, opencv {m['opencv']}, numpy {m['numpy']}",
             f"bundle: {r['bundle']['name']} {r['bundle']['version']} (build {r['bundle']['build']}); "
             f"backend {r['backend']}; head {r['head_backend']}", "",
             f"model lowerings (batch {low['batch']}, {low['threads']} threads), ms per inference:",
             f"  {'graph':<12}{'file':<22}{'KB':>8}{'mean':>9}{'p50':>9}{'p95':>9}"]
    for role, g in low["graphs"].items():
        lines.append(f"  {role:<12}{g['file']:<22}{g['bytes'] / 1024:>8.0f}{g['mean']:>9.3f}{g['p50']:>9.3f}"
                     f"{g['p95']:>9.3f}")
    if "int8_speedup_vs_fp32" in low:
        lines.append(f"  INT8 (CPU lowering) vs FP32 speed-up at p50: {low['int8_speedup_vs_fp32']:.2f}x")
    if "tensorrt_onnx_bytes" in low:
        lines.append(f"  TensorRT Q/DQ graph: {low['tensorrt_onnx_bytes'] / 2**20:.2f} MB")
    lines += ["", f"pipeline: {pipe['frames']} frames {pipe['size']}, {pipe['faces_per_frame']:.2f} faces/frame, "
              f"{pipe['processed_fps']:.1f} processed fps, RSS {pipe['rss_mb']:.0f} MB",
              f"  {'stage':<10}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}   (ms)"]
    for stage, s in {**pipe["stages_ms"], "frame": pipe["frame_ms"]}.items():
        lines.append(f"  {stage:<10}{s['mean']:>9.2f}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}")
    lines += ["", "semantic head (NumPy path), microseconds:", f"  {'stage':<18}{'batch':>6}{'mean':>9}{'p50':>9}"
              f"{'p99':>9}"]
    for row in r["head"]:
        lines.append(f"  {row['stage']:<18}{row['batch']:>6}{row['mean_us']:>9.1f}{row['p50_us']:>9.1f}"
                     f"{row['p99_us']:>9.1f}")
    return "\n".join(lines)
