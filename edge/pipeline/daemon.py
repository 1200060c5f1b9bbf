"""The capture daemon: capture thread -> latest-frame slot -> processor -> sinks, under systemd.

Start-up refuses to run on a bad config or bundle (one clear message, exit 2)
and self-tests the bundle on the real backend. At run time nothing a camera or
broker does kills the process: sources reconnect, sinks buffer. SIGTERM/SIGINT
finish the current frame, flush sinks and exit 0; SIGHUP re-reads the config
and, when the bundle it names has changed, hot-swaps the model between frames.
With fleet updates on, the daemon runs `<update.bundles_dir>/current`, follows
that link when the update agent moves it, and writes a health report the agent
watches (docs/fleet.md). A new model is loaded and self-tested on a worker
thread while the old one keeps processing, so a swap pauses the frame loop
only for the pointer change.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge import __version__
from edge.bundle import Bundle
from edge.bundle.default import resolve_bundle
from edge.capture.reader import CaptureThread
from edge.capture.sources import open_source
from edge.config import SensorConfig, load_config
from edge.fleet.health import REPORT_INTERVAL_S, HealthReport, write_report
from edge.fleet.store import BundleStore
from edge.pipeline.processor import FrameProcessor
from edge.pipeline.sinks import JsonlSink, Sink, StdoutSink
from edge.pipeline.stats import CpuMeter, LatencyWindow, RateMeter, rss_mb, soc_temperature_c
from edge.redact import redact_url
from edge.runtime.select import open_backend
from edge.runtime.selftest import run_selftest
from edge.service.notify import Notifier, Watchdog

log = logging.getLogger("affect-sensor")
ENGINE_BUILD_ALLOWANCE_S = 900.0


class StartupError(RuntimeError):
    """The daemon cannot start (bad bundle, failed self-test); exit code 2, no restart loop."""


@dataclass
class RunLimits:
    max_frames: int | None = None
    duration_s: float | None = None


@dataclass
class DaemonState:
    frames: int = 0
    invalid_outputs: int = 0
    swaps: int = 0
    last_swap_gap_ms: float | None = None
    swap_error: str | None = None
    swap_error_dir: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)


def device_id(config: SensorConfig) -> str:
    return config.device.id or socket.gethostname().split(".")[0] or "device"


def bundle_dir(config: SensorConfig) -> Path | None:
    """`model.bundle`; with fleet updates, the store's `current` (seeded with the built-in default on first start)."""
    if not config.update.enabled:
        return config.model.bundle
    store = BundleStore(config.update.bundles_dir)
    return store.current_dir() or store.seed(resolve_bundle(None))


class BundleLoadError(StartupError):
    """A bundle the daemon cannot run. `stage`: "bundle" (files, labels vs head), "backend", "selftest"."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(message)


def load_processor(config: SensorConfig, bundle: Bundle, *, selftest: bool = True,
                   on_stage: Callable[[str], None] | None = None) -> FrameProcessor:
    """Everything the daemon does to a bundle before it runs it: open the backend (building a TensorRT
    engine), check the head file against the label spaces and input spec, run the golden self-test.

    The update agent calls this before it switches `current`, so a bundle the
    daemon would refuse is refused before any daemon can start on it.
    """
    try:
        backend = open_backend(bundle, config.model)
    except Exception as exc:
        raise BundleLoadError("backend", f"bundle {bundle.path}: cannot open the {config.model.backend} backend: "
                                         f"{type(exc).__name__}: {exc}") from None
    try:
        processor = FrameProcessor(bundle, config, device_id(config), backend=backend)
    except (ValueError, OSError, KeyError) as exc:
        raise BundleLoadError("bundle", str(exc) if str(bundle.path) in str(exc)
                              else f"bundle {bundle.path}: {exc}") from None
    if selftest:
        if on_stage is not None:
            on_stage("self_testing")
        try:
            result = run_selftest(bundle, processor.backend)
        except (ValueError, OSError) as exc:
            raise BundleLoadError("selftest", f"bundle {bundle.path}: self-test could not run: {exc}") from None
        log.info("%s: %s", bundle.manifest.name, result)
        if not result.passed:
            raise BundleLoadError("selftest", f"bundle {bundle.path}: {result}; refusing to run a model that "
                                              "does not reproduce its own golden outputs")
    return processor


def open_processor(config: SensorConfig, path: Path | None = None, *, selftest: bool = True) -> FrameProcessor:
    """A processor for `path`, or for the bundle the config names; self-tested on its real backend."""
    return load_processor(config, resolve_bundle(path if path is not None else bundle_dir(config)),
                          selftest=selftest)


class SwapWorker:
    """Loads and self-tests a candidate bundle off the frame loop, so the old model keeps running meanwhile."""

    def __init__(self, config: SensorConfig, path: Path | None) -> None:
        self.config, self.path = config, path
        self.processor: FrameProcessor | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name="bundle-swap", daemon=True).start()

    def _run(self) -> None:
        try:
            self.processor = open_processor(self.config, self.path)
        except Exception as exc:  # any failure keeps the running model
            self.error = exc
        finally:
            self.done.set()


class Daemon:
    def __init__(self, config_path: Path | None, overrides: list[str] | None = None,
                 limits: RunLimits | None = None, extra_sinks: list[Sink] | None = None) -> None:
        self.config_path, self.overrides = config_path, list(overrides or [])
        self.limits = limits if limits is not None else RunLimits()
        self.config = load_config(config_path, self.overrides)
        self.state = DaemonState()
        self.notifier = Notifier.from_env()
        if self.config.model.backend != "onnxruntime":
            self.notifier.extend_timeout(ENGINE_BUILD_ALLOWANCE_S)  # a first TensorRT build can take minutes
        self.processor = open_processor(self.config)
        self.store = BundleStore(self.config.update.bundles_dir) if self.config.update.enabled else None
        self.followed = self.bundle.path  # the link target last acted on
        self.swapper: SwapWorker | None = None
        self.queued_swap: tuple[SensorConfig, Path | None] | None = None
        self.last_frame_end: float | None = None
        self.swap_mark: float | None = None
        self.sinks: list[Sink] = self._sinks(self.config) + list(extra_sinks or [])
        self.mqtt = None
        if self.config.mqtt.enabled:
            from edge.pipeline.mqtt_sink import MqttSink

            self.mqtt = MqttSink(self.config, self.processor.device_id)
            self.mqtt.announce(self.bundle.manifest, self.processor.backend.describe())
            self.sinks.append(self.mqtt)
        self.watchdog = Watchdog.from_env(self.notifier)
        self.latency = LatencyWindow()
        self.processed, self.captured, self.cpu = RateMeter(), RateMeter(), CpuMeter()
        self.last_faces = 0

    @staticmethod
    def _sinks(config: SensorConfig) -> list[Sink]:
        sinks: list[Sink] = []
        if config.sinks.jsonl is not None:
            sinks.append(JsonlSink(config.sinks.jsonl))
        if config.sinks.stdout:
            sinks.append(StdoutSink())
        return sinks

    @property
    def bundle(self) -> Bundle:
        return self.processor.bundle

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.state.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.state.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.state.reload.set())

    def request_swap(self, config: SensorConfig, path: Path | None) -> None:
        """Start loading `path` (or the config's bundle) in the background; one at a time, the latest wins."""
        if self.swapper is not None:
            self.queued_swap = (config, path)
        else:
            self.swapper = SwapWorker(config, path)

    def _finish_swap(self) -> None:
        worker = self.swapper
        if worker is None or not worker.done.is_set():
            return
        self.swapper = None
        if self.store is not None and worker.path is not None and worker.path != self.followed:
            log.info("discarding %s: the update agent moved current on while it loaded", worker.path.name)
        elif worker.processor is None:
            where = str(worker.path) if worker.path is not None else "configured bundle"
            log.error("bundle swap refused, keeping %s: %s", self.bundle.manifest.name, worker.error)
            self.state.swap_error, self.state.swap_error_dir = str(worker.error), where
        else:
            old, candidate = self.processor, worker.processor
            self.processor, self.config = candidate, worker.config
            self.state.swaps += 1
            self.state.swap_error = self.state.swap_error_dir = None
            self.swap_mark = self.last_frame_end if self.last_frame_end is not None else time.monotonic()
            if self.mqtt is not None:
                self.mqtt.announce(candidate.bundle.manifest, candidate.backend.describe())
            m = candidate.bundle.manifest
            log.info("now running bundle %s %s (build %d) from %s, was %s %s", m.name, m.version, m.build,
                     candidate.bundle.path, old.bundle.manifest.name, old.bundle.manifest.version)
        if self.queued_swap is not None:
            config, path = self.queued_swap
            self.queued_swap = None
            self.request_swap(config, path)

    def _follow_link(self) -> None:
        """Fleet updates: the agent moved `current`; load what it points to now."""
        assert self.store is not None
        try:
            target = self.store.current_dir()
        except Exception as exc:
            log.error("cannot read the bundle store's current link: %s", exc)
            return
        if target is not None and target != self.followed:
            self.followed = target
            if target == self.bundle.path:  # back to what runs (a rollback): a load in flight is now stale
                self.queued_swap = None
                return
            log.info("update agent switched current to %s; loading it", target.name)
            self.request_swap(self.config, target)

    def _write_health(self) -> None:
        s = self.state
        report = HealthReport(
            pid=os.getpid(), ts=time.time(), bundle_dir=str(self.bundle.path), build=self.bundle.manifest.build,
            frames=s.frames, invalid_outputs=s.invalid_outputs, swap_error=s.swap_error,
            swap_error_dir=s.swap_error_dir, last_swap_gap_ms=s.last_swap_gap_ms)
        try:
            write_report(self.config.update.health_file, report)
        except OSError as exc:
            log.warning("cannot write the health report %s: %s", self.config.update.health_file, exc)

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            config = load_config(self.config_path, self.overrides)
        except Exception as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            self.notifier.ready("reload failed; running the previous config")
            return
        try:
            path = bundle_dir(config)
            # Only to see whether it changed: the swap verifies every hash before using it.
            new_manifest = resolve_bundle(path, verify_hashes=False).manifest
        except Exception as exc:
            log.error("config reload: bundle not usable, keeping the running one: %s", exc)
            new_manifest = None
        current = self.bundle.manifest
        changed = new_manifest is not None and (new_manifest.name, new_manifest.build, new_manifest.files) != (
            current.name, current.build, current.files)
        if changed or config.model != self.config.model or config.head != self.config.head:
            self.request_swap(config, None)
        else:
            self.config = config
        self.notifier.ready("reloaded")

    def run(self) -> int:
        capture = CaptureThread(lambda: open_source(self.config.source), self.config.source).start()
        started = time.monotonic()
        next_stats = started + self.config.stats.interval_s
        next_health = started
        reconnects = 0
        m = self.bundle.manifest
        self.notifier.ready(f"running {m.name} {m.version} on {self.processor.backend.describe()}")
        log.info("started: device %s, source %s, bundle %s %s, backend %s, head %s", self.processor.device_id,
                 redact_url(self.config.source.uri), m.name, m.version, self.processor.backend.describe(),
                 self.processor.head.backend)
        self.watchdog.start()
        try:
            while not self.state.stop.is_set():
                if self.state.reload.is_set():
                    self.state.reload.clear()
                    self._reload()
                self._finish_swap()
                if self.store is not None and time.monotonic() >= next_health:
                    next_health = time.monotonic() + REPORT_INTERVAL_S
                    self._follow_link()
                    self._write_health()
                frame = capture.slot.get(timeout=0.25)
                now = time.monotonic()
                stats = capture.stats()
                if stats.reconnects != reconnects:
                    reconnects = stats.reconnects
                    self.processor.reset_tracks()
                if frame is None:
                    if not stats.connected:
                        self.watchdog.heartbeat()  # waiting for a camera is not a stalled pipeline
                    if not capture.running and capture.slot.closed:
                        log.info("source ended")
                        break
                else:
                    self._process(frame)
                if now >= next_stats:
                    next_stats = now + self.config.stats.interval_s
                    self._log_stats(capture, now - started)
                if self._limits_reached(now - started):
                    break
        finally:
            self.notifier.stopping("stopping")
            self.watchdog.stop()
            capture.stop()
            for sink in self.sinks:
                sink.close()
            log.info("stopped after %d frames", self.state.frames)
        return 0

    def _process(self, frame) -> None:
        epoch = time.time() - (time.monotonic() - frame.timestamp)
        result = self.processor.process(frame.image, self.state.frames, frame.timestamp, epoch)
        self.state.frames += 1
        self.state.invalid_outputs += result.invalid
        done = time.monotonic()
        if self.swap_mark is not None:  # first frame on the new model: how long did processing pause?
            self.state.last_swap_gap_ms = (done - self.swap_mark) * 1e3
            self.swap_mark = None
        self.last_frame_end = done
        self.processed.tick()
        self.last_faces = len(result.record.faces)
        self.watchdog.heartbeat()
        for stage, ms in result.stage_ms.items():
            self.latency.add(stage, ms)
        self.latency.add("frame", result.record.latency_ms)
        for sink in self.sinks:
            sink.write(result.record)

    def _limits_reached(self, elapsed: float) -> bool:
        lim = self.limits
        return (lim.max_frames is not None and self.state.frames >= lim.max_frames) or (
            lim.duration_s is not None and elapsed >= lim.duration_s)

    def stats_snapshot(self, capture: CaptureThread, uptime: float) -> dict:
        cs = capture.stats()
        self.captured.tick(cs.frames - self.captured.count)
        return {
            "uptime_s": round(uptime, 1), "capture_frames": cs.frames, "processed_frames": self.state.frames,
            "capture_fps": round(self.captured.rate(), 2), "processed_fps": round(self.processed.rate(), 2),
            "frames_dropped": cs.dropped, "faces": self.last_faces,
            "reconnects": cs.reconnects, "cpu_percent": round(self.cpu.percent(), 1), "rss_mb": round(rss_mb(), 1),
            "temperature_c": soc_temperature_c(), "latency_ms": self.latency.percentiles(),
            "software_version": __version__,
        }

    def _log_stats(self, capture: CaptureThread, uptime: float) -> None:
        s = self.stats_snapshot(capture, uptime)
        if self.mqtt is not None:
            self.mqtt.publish_stats(s, self.processor.bundle_ref)
        frame = s["latency_ms"].get("frame", {})
        log.info("stats: %.1f fps processed, %d dropped, frame latency p50 %s / p95 %s ms, cpu %.0f%%, rss %.0f MB",
                 s["processed_fps"], s["frames_dropped"], frame.get("p50"), frame.get("p95"), s["cpu_percent"],
                 s["rss_mb"])
