"""Benchmarks behind `affect-sensor bench`: the machine, the model lowerings, the pipeline stages.

Everything is measured in one run on one machine and labelled with it; ratios
(INT8 vs FP32) come from the same run, because absolute times on a shared box
drift from minute to minute.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle
from edge.pipeline.processor import FrameProcessor
from edge.pipeline.stats import rss_mb, summarize


def machine() -> dict[str, Any]:
    import cv2
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    with contextlib.suppress(OSError):  # Jetson boards name themselves here
        gpu = Path("/proc/device-tree/model").read_text().strip("\x00\n") or None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__}


def bench_lowerings(bundle: Bundle, threads: int, batch: int = 1, iterations: int = 200) -> dict[str, Any]:
    """Per-inference latency of each CPU-runnable graph in the bundle, interleaved to share the noise."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {}
    for role in ("onnx_cpu", "onnx_fp32"):
        path = bundle.role(role)
        if path is not None:
            sessions[role] = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), path)
    spec = bundle.manifest.input
    x = np.random.default_rng(0).standard_normal((batch, spec.channels, spec.crop_size, spec.crop_size))
    x = x.astype(np.float32)
    times: dict[str, list[float]] = {role: [] for role in sessions}
    for _ in range(20):
        for session, _path in sessions.values():
            session.run(None, {"image": x})
    for _ in range(iterations):
        for role, (session, _path) in sessions.items():
            start = time.perf_counter()
            session.run(None, {"image": x})
            times[role].append((time.perf_counter() - start) * 1e3)
    out: dict[str, Any] = {"batch": batch, "threads": threads, "graphs": {}}
    for role, (_session, path) in sessions.items():
        out["graphs"][role] = {"file": path.name, "bytes": path.stat().st_size, **summarize(times[role])}
    if {"onnx_cpu", "onnx_fp32"} <= set(times):
        out["int8_speedup_vs_fp32"] = out["graphs"]["onnx_fp32"]["p50"] / out["graphs"]["onnx_cpu"]["p50"]
    trt = bundle.role("onnx_tensorrt")
    if trt is not None:
        out["tensorrt_onnx_bytes"] = trt.stat().st_size
    return out


def bench_pipeline(processor: FrameProcessor, frames: list[np.ndarray], decode_ms: list[float]) -> dict[str, Any]:
    """Process pre-decoded frames back to back; stage latencies, frame latency and processed fps."""
    stages: dict[str, list[float]] = {}
    frame_ms, faces = [], []
    started = time.perf_counter()
    for index, image in enumerate(frames):
        t0 = time.monotonic()
        result = processor.process(image, index, captured_at=t0)
        frame_ms.append(result.record.latency_ms)
        faces.append(len(result.record.faces))
        for stage, ms in result.stage_ms.items():
            stages.setdefault(stage, []).append(ms)
    elapsed = time.perf_counter() - started
    table = {stage: summarize(values) for stage, values in stages.items()}
    if decode_ms:
        table = {"capture": summarize(decode_ms), **table}
    return {
        "frames": len(frames), "processed_fps": len(frames) / elapsed, "faces_per_frame": float(np.mean(faces)),
        "frame_ms": summarize(frame_ms), "stages_ms": table, "rss_mb": rss_mb(),
        "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
    }


def load_frames(video: Path | None, count: int, width: int = 640, height: int = 480) -> tuple[list, list[float]]:
    """Frames from a video file (timing the decode) or rendered from the built-in demo at 30 fps."""
    import cv2

    if video is None:
        from edge.capture.demo import load_demo_photos, render_demo_frame

        photos = load_demo_photos()
        return [render_demo_frame(photos, i / 30.0, width, height) for i in range(count)], []
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError(f"{video}: not a readable video")
    frames, decode = [], []
    try:
        while len(frames) < count:
            start = time.perf_counter()
            ok, image = capture.read()
            if not ok:
                break
            decode.append((time.perf_counter() - start) * 1e3)
            frames.append(image)
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"{video}: no frames")
    return frames, decode
