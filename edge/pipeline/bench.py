"""Benchmarks behind `affect-sensor bench` (and the device half of `affect-quantize bench`).

Everything is measured in one run on one machine and labelled with it; ratios
(INT8 vs FP32) come from the same run, interleaved, because absolute times on a
shared box drift from minute to minute. Stages are those of the daemon's
processing loop (detect, track, align, infer, head, publish) plus the capture
source's own cost (video decode, or rendering of the built-in demo frame), which
in the daemon runs on the capture thread, beside the loop, not inside it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import resource
import shutil
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle
from edge.bundle.manifest import Manifest
from edge.pipeline.processor import FrameProcessor
from edge.pipeline.stats import rss_mb, summarize
from edge.publish.payloads import ExpressionEvents, ResultRecord

# Packages whose versions label every figure (those installed; absent ones are left out).
LIBRARIES = ("affect-sensor", "numpy", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "opencv-python",
             "pydantic", "paho-mqtt", "tensorrt", "cuda-python", "torch", "onnx", "ai-edge-litert")
# CPU features that decide how fast INT8 and FP32 kernels can be.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "Hardware") and cpu in ("", platform.machine(), platform.processor()):
                cpu = value.strip() or cpu
            elif key in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    return cpu, [f for f in ISA_FLAGS if f in flags]


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs from /proc/cpuinfo; None where it does not say."""
    with contextlib.suppress(OSError):
        pairs, package = set(), None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                package = value.strip()
            elif key == "core id":
                pairs.add((package, value.strip()))
        return len(pairs) or None
    return None


def _gpu() -> str | None:
    """Jetson board name, an NVIDIA driver's GPU model(s), or None."""
    with contextlib.suppress(OSError):  # Jetson boards name themselves here
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
        if model:
            return model
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        with contextlib.suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
    if not names and shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            names = [n.strip() for n in out.splitlines() if n.strip()]
    return ", ".join(names) or None


def _versions() -> dict[str, str]:
    out = {}
    for dist in LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def machine() -> dict[str, Any]:
    """What every figure is labelled with: CPU model and cores, GPU if any, OS and library versions."""
    import cv2
    import onnxruntime

    cpu, isa = _cpu_model_and_flags()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "physical_cores": _physical_cores(), "usable_cores": affinity,
        "isa": isa, "gpu": _gpu(), "memory_gb": _memory_gb(), "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": onnxruntime.get_available_providers(),
        "opencv": cv2.__version__, "libraries": _versions(),
    }


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine, for the top of every table."""
    libs = m.get("libraries", {})
    extra = ", ".join(f"{k} {libs[k]}" for k in ("torch", "tensorrt", "ai-edge-litert") if k in libs)
    cores = f"{m['cores']} logical cores" + (f" ({m['physical_cores']} physical)" if m.get("physical_cores") else "")
    isa = f" [{' '.join(m['isa'])}]" if m.get("isa") else ""
    return (f"machine: {m['cpu']}{isa}, {cores}, {m.get('memory_gb')} GB, GPU: {m['gpu'] or 'none'}; {m['os']}; "
            f"python {m['python']}, onnxruntime {m['onnxruntime']}, opencv {m['opencv']}, numpy {m['numpy']}"
            + (f", {extra}" if extra else ""))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (getrusage; kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ the bundle


def bundle_summary(bundle: Bundle, detector: Path | None = None) -> dict[str, Any]:
    """Name, build, creation time and the size of every file, plus the detector's (default: the short-range model)."""
    from edge.detection.blazeface import default_model_path

    m = bundle.manifest
    files = [{"file": name, "role": entry.role, "bytes": entry.size} for name, entry in sorted(m.files.items())]
    detector = detector if detector is not None else default_model_path()
    return {
        "name": m.name, "version": m.version, "build": m.build, "created": m.created.isoformat(),
        "path": str(bundle.path), "files": files, "total_bytes": sum(f["bytes"] for f in files),
        "detector": {"file": detector.name, "bytes": detector.stat().st_size if detector.is_file() else None},
    }


def accuracy_retention(manifest: Manifest) -> dict[str, Any]:
    """The manifest's measured metrics: teacher -> FP32 student -> INT8 student on the teacher's data, with
    retention vs the teacher; figures measured on other data (add-metrics) as their own tables, never as a
    share of a teacher figure from another set."""
    by_data: dict[str, dict[str, dict[str, float]]] = {}
    for metric in manifest.metrics:
        by_data.setdefault(metric.data, {})[metric.model] = dict(metric.values)
    home = next((d for d, models in by_data.items() if "teacher" in models), None)
    rows = by_data.pop(home, {}) if home is not None else {}
    teacher = rows.get("teacher")
    retention = {}
    if teacher:
        for model, values in rows.items():
            retention[model] = {k: v / teacher[k] for k, v in values.items() if teacher.get(k)}
    return {"data": [] if home is None else [home], "models": rows, "retention_vs_teacher": retention,
            "other_sets": [{"data": d, "models": models} for d, models in sorted(by_data.items())]}


# ------------------------------------------------------------------ model graphs


def ort_session(model: Path | bytes, threads: int):
    """A CPU session on a graph file, or on serialized graph bytes built in memory."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def time_rotating(runners: dict[str, Any], iterations: int, rounds: int = 10, warmup: int = 10) -> dict[str, list]:
    """ms per call of each runner: `rounds` rounds, each a block of calls per runner, the order rotating.

    Blocks rather than call-by-call interleaving: onnxruntime's pool threads spin for a
    while after a run, and would steal the cores from whichever model runs next; in a block
    only the first call pays for that, and the median ignores it. Rotating the order makes
    every model follow every other equally often, so the ratios share the machine's drift.
    """
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    rounds = max(1, min(rounds, iterations))
    for r in range(rounds):
        block = iterations // rounds + (1 if r < iterations % rounds else 0)
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = runners[name]
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def bench_lowerings(bundle: Bundle, threads: int, batch: int = 1, iterations: int = 200,
                    roles: tuple[str, ...] = ("onnx_cpu", "onnx_fp32")) -> dict[str, Any]:
    """Per-inference latency of each CPU-runnable graph in the bundle, in rotating blocks to share the noise."""
    spec = bundle.manifest.input
    x = np.random.default_rng(0).standard_normal((batch, spec.channels, spec.crop_size, spec.crop_size))
    x = x.astype(np.float32)
    paths, runners = {}, {}
    for role in roles:
        path = bundle.role(role)
        if path is not None:
            session = ort_session(path, threads)
            paths[role] = path
            runners[role] = lambda s=session: s.run(None, {spec.tensor: x})
    times = time_rotating(runners, iterations)
    out: dict[str, Any] = {"batch": batch, "threads": threads, "iterations": iterations, "graphs": {}}
    for role, path in paths.items():
        out["graphs"][role] = {"file": path.name, "bytes": path.stat().st_size, **summarize(times[role])}
    if {"onnx_cpu", "onnx_fp32"} <= set(times):
        out["int8_speedup_vs_fp32"] = out["graphs"]["onnx_fp32"]["p50"] / out["graphs"]["onnx_cpu"]["p50"]
    trt = bundle.role("onnx_tensorrt")
    if trt is not None:
        out["tensorrt_onnx_bytes"] = trt.stat().st_size
    return out


# ------------------------------------------------------------------ the pipeline


class PublishProbe:
    """What publishing a result costs the processing loop: JSON payload, expression events, hand-off to a queue.

    The same work `MqttSink.write` does on the loop's thread (network I/O happens on the
    publisher's own thread and is not on the loop's critical path).
    """

    def __init__(self, device: str = "bench") -> None:
        self.events = ExpressionEvents(device)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.published = 0

    def write(self, record: ResultRecord, held: tuple[int, ...] = ()) -> None:
        self.queue.put(record.to_json())
        for event in self.events.update(record, held):
            self.queue.put(event.to_json())
        self.published += 1
        while not self.queue.empty():  # a publisher thread would drain it; keep memory flat
            self.queue.get_nowait()


class RoleBackend:
    """A CPU onnxruntime backend for one named graph of the bundle (to run the pipeline on FP32 vs INT8)."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, role: str, threads: int) -> None:
        from edge.runtime.backend import BackendError

        path = bundle.role(role)
        if path is None:
            raise BackendError(f"bundle {bundle.path} has no {role} graph")
        self.role, self.path, self.threads = role, path, threads
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, images: np.ndarray):
        from edge.runtime.backend import Features

        f, g = self.session.run(["f", "g"], {self.input_name: images.astype(np.float32, copy=False)})
        return Features(f, g)

    def describe(self) -> str:
        return f"onnxruntime {self.path.name} (CPUExecutionProvider, {self.threads} threads)"


def pipeline_samples(processor: FrameProcessor, frames: list[np.ndarray], first_index: int = 0,
                     probe: PublishProbe | None = None) -> dict[str, Any]:
    """Raw per-frame samples of processing `frames` back to back (stages in ms, faces, loop seconds)."""
    probe = probe if probe is not None else PublishProbe(processor.device_id)
    stages: dict[str, list[float]] = {}
    frame_ms, faces, detect_all = [], [], []
    busy = 0.0  # loop time only: frames rendered on demand (RenderedFrames) are not the loop's cost
    for index, image in enumerate(frames, start=first_index):
        started = time.perf_counter()
        t0 = time.monotonic()
        result = processor.process(image, index, captured_at=t0)
        t1 = time.perf_counter()
        probe.write(result.record, result.held)
        publish = (time.perf_counter() - t1) * 1e3
        busy += time.perf_counter() - started
        frame_ms.append(result.record.latency_ms + publish)
        faces.append(len(result.record.faces))
        for stage, ms in {**result.stage_ms, "publish": publish}.items():
            if stage == "detect":  # the detector runs every k-th frame; the tracker carries the others
                detect_all.append(ms)
                if not result.faces.detector_ran:
                    continue
            stages.setdefault(stage, []).append(ms)
    return {"stages": stages, "frame_ms": frame_ms, "faces": faces, "detect_all": detect_all,
            "seconds": busy, "frames": len(frame_ms)}


def merge_samples(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"stages": {}, "frame_ms": [], "faces": [], "detect_all": [], "seconds": 0.0, "frames": 0}
    for part in parts:
        for stage, values in part["stages"].items():
            out["stages"].setdefault(stage, []).extend(values)
        for key in ("frame_ms", "faces", "detect_all"):
            out[key].extend(part[key])
        out["seconds"] += part["seconds"]
        out["frames"] += part["frames"]
    return out


def summarize_pipeline(samples: dict[str, Any], processor: FrameProcessor, frames: list[np.ndarray],
                       capture_ms: list[float], capture_source: str) -> dict[str, Any]:
    table = {stage: summarize(values) for stage, values in samples["stages"].items()}
    if capture_ms:
        table = {"capture": summarize(capture_ms), **table}
    n, elapsed = samples["frames"], samples["seconds"]
    capture_s = float(np.mean(capture_ms)) * n / 1e3 if capture_ms else 0.0
    return {
        "frames": n, "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}", "capture_source": capture_source,
        "processed_fps": n / elapsed, "serial_fps_with_capture": n / (elapsed + capture_s),
        "faces_per_frame": float(np.mean(samples["faces"])),
        "detector_every_k_frames": processor.config.detection.every_k_frames,
        "detect_ms_per_frame_amortised": float(np.mean(samples["detect_all"])) if samples["detect_all"] else 0.0,
        "frame_ms": summarize(samples["frame_ms"]), "stages_ms": table, "rss_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
    }


def bench_pipeline(processor: FrameProcessor, frames: list[np.ndarray], capture_ms: list[float],
                   capture_source: str = "demo") -> dict[str, Any]:
    """Process pre-captured frames back to back: stage latencies, frame latency, fps, memory."""
    samples = pipeline_samples(processor, frames)
    return summarize_pipeline(samples, processor, frames, capture_ms, capture_source)


class RenderedFrames:
    """Frames of the demo room rendered on demand (a 1080p clip held in memory would be GBs); times each render."""

    def __init__(self, pairs: list, spec, count: int, fps: float = 30.0) -> None:
        self.pairs, self.spec, self.count, self.fps = pairs, spec, count, fps
        self.render_ms: list[float] = []

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        from edge.capture.demo import render_scene

        if not 0 <= i < self.count:
            raise IndexError(i)
        start = time.perf_counter()
        frame = render_scene(self.pairs, self.spec, i / self.fps)
        self.render_ms.append((time.perf_counter() - start) * 1e3)
        return frame


def room_frames(faces: int, count: int, width: int, height: int, photos: Path | None = None,
                fps: float = 30.0) -> RenderedFrames:
    """The demo room: `faces` real faces at several sizes (London pairs from `photos`, or the shipped pair)."""
    from edge.capture.demo import SceneSpec, load_photo_pairs

    return RenderedFrames(load_photo_pairs(photos), SceneSpec(width, height, faces), count, fps)


def paced_cpu(processor: FrameProcessor, frames, fps: float, count: int) -> dict[str, Any]:
    """CPU time per processed frame when frames arrive at the source's rate, as in the daemon.

    A feeder thread (the daemon's capture thread) makes the frames ahead into a
    short queue; frame i is due at `start + i / fps`. Like the daemon's latest-frame
    slot, the loop sleeps until the next frame is due and, when it fell behind,
    skips to the newest due frame (the skipped ones count as dropped). CPU time of
    the whole process (all threads: onnxruntime workers spinning between frames
    count) less the feeder's own, divided by the frames processed.
    """
    import threading

    processor.reset_tracks()
    probe = PublishProbe(processor.device_id)
    n = min(count, len(frames))
    ready: queue.Queue = queue.Queue(maxsize=8)
    feeder_cpu = [0.0]

    def feed() -> None:
        for i in range(n):
            t = time.thread_time()
            image = frames[i]
            feeder_cpu[0] += time.thread_time() - t
            ready.put(image)

    processed = dropped = 0
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    feeder = threading.Thread(target=feed, name="bench-feeder", daemon=True)
    start = time.monotonic()
    feeder.start()
    taken = 0  # frames taken from the feeder so far
    while taken < n:
        delay = start + taken / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        newest = min(n - 1, max(taken, int((time.monotonic() - start) * fps)))
        while taken < newest:  # behind: the slot would have replaced these
            ready.get()
            taken += 1
            dropped += 1
        image = ready.get()
        taken += 1
        probe.write(processor.process(image, taken - 1, captured_at=time.monotonic()).record)
        processed += 1
    wall = time.monotonic() - start
    feeder.join()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime) - feeder_cpu[0]
    return {"fps": fps, "frames": n, "processed": processed, "dropped": dropped,
            "cpu_ms_per_frame": cpu * 1e3 / max(processed, 1), "cpu_percent_of_core": 100.0 * cpu / max(wall, 1e-9),
            "wall_s": wall, "feeder_cpu_ms_per_frame": feeder_cpu[0] * 1e3 / max(n, 1)}


def load_frames(video: Path | None, count: int, width: int = 640, height: int = 480) -> tuple[list, list[float]]:
    """Frames from a video file (timing the decode) or rendered from the built-in demo at 30 fps (timing the render)."""
    import cv2

    if video is None:
        from edge.capture.demo import load_demo_photos, render_demo_frame

        photos = load_demo_photos()
        frames, render = [], []
        for i in range(count):
            start = time.perf_counter()
            frames.append(render_demo_frame(photos, i / 30.0, width, height))
            render.append((time.perf_counter() - start) * 1e3)
        return frames, render
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


# ------------------------------------------------------------------ tables


def stage_table(pipe: dict[str, Any], indent: str = "  ") -> list[str]:
    lines = [f"{indent}{'stage':<10}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}   (ms)"]
    for stage, s in {**pipe["stages_ms"], "frame": pipe["frame_ms"]}.items():
        lines.append(f"{indent}{stage:<10}{s['mean']:>9.3f}{s['p50']:>9.3f}{s['p95']:>9.3f}{s['p99']:>9.3f}")
    return lines


def size_table(summary: dict[str, Any], indent: str = "  ") -> list[str]:
    lines = [f"{indent}{'file':<30}{'role':<16}{'KB':>9}"]
    for f in summary["files"]:
        lines.append(f"{indent}{f['file']:<30}{f['role']:<16}{f['bytes'] / 1024:>9.1f}")
    det = summary["detector"]
    if det["bytes"] is not None:
        lines.append(f"{indent}{det['file']:<30}{'detector':<16}{det['bytes'] / 1024:>9.1f}")
    return lines


def retention_table(acc: dict[str, Any], indent: str = "  ") -> list[str]:
    models = acc["models"]
    if not models and not acc.get("other_sets"):
        return [f"{indent}(the manifest carries no metrics)"]
    lines = []
    if models:
        keys = sorted({k for values in models.values() for k in values})
        lines.append(f"{indent}{'model':<20}" + "".join(f"{k:>14}" for k in keys))
        for model, values in models.items():
            ret = acc["retention_vs_teacher"].get(model, {})
            cells = "".join(f"{values[k]:>7.3f} ({ret[k]:>4.0%})" if k in ret
                            else f"{values.get(k, float('nan')):>14.3f}" for k in keys)
            lines.append(f"{indent}{model:<20}{cells}")
        lines.append(f"{indent}(in brackets: share of the teacher's value; data: {'; '.join(acc['data'])})")
    for other in acc.get("other_sets", []):
        lines.append(f"{indent}measured on {other['data']}:")
        for model, values in other["models"].items():
            shown = ", ".join(f"{k} {v:.0f}" if k == "faces" else f"{k} {v:.3f}"
                              for k, v in values.items() if k in ("accuracy", "uar", "faces"))
            lines.append(f"{indent}  {model}: {shown}")
    return lines
