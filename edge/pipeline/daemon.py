"""The capture daemon: capture thread -> latest-frame slot -> processor -> sinks, under systemd.

Start-up refuses to run on a bad config or bundle (one clear message, exit 2)
and self-tests the bundle on the real backend. At run time nothing a camera or
broker does kills the process: sources reconnect, sinks buffer, and a frame
that raises is logged, counted and skipped (only `daemon.max_consecutive_frame_errors`
failures in a row end the process, non-zero, for systemd to restart it).
SIGTERM/SIGINT finish the current frame, flush sinks and exit 0; SIGHUP re-reads
the config, applies what can be applied live and logs "restart needed for
[section]" for the rest (edge/pipeline/reload.py). With fleet updates on, the
daemon runs `<update.bundles_dir>/current`, follows that link when the update
agent moves it, and writes a health report the agent watches (docs/fleet.md).
A new model runtime is loaded and self-tested on a worker thread while the old
one keeps processing; the swap replaces only the runtime between two frames,
so track ids and smoothing carry over (edge/pipeline/processor.py).
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
from edge.pipeline.jetson_stats import TegraStats
from edge.pipeline.model_runtime import ModelRuntime
from edge.pipeline.processor import FrameProcessor
from edge.pipeline.reload import diff_sections, merge
from edge.pipeline.sinks import JsonlSink, Sink, StdoutSink
from edge.pipeline.stats import CpuMeter, LatencyWindow, RateMeter, rss_mb, soc_temperature_c
from edge.redact import redact_url
from edge.runtime.backend import BackendError
from edge.runtime.cuda_binding import CudaUnavailableError
from edge.service.notify import Notifier, Watchdog

log = logging.getLogger("affect-sensor")
ENGINE_BUILD_ALLOWANCE_S = 900.0


class StartupError(RuntimeError):
    """The daemon cannot start (bad bundle, failed self-test); exit code 2, no restart loop."""


class FrameFailureError(RuntimeError):
    """Too many frames in a row raised: exit non-zero so systemd restarts the daemon."""


@dataclass
class RunLimits:
    max_frames: int | None = None
    duration_s: float | None = None


@dataclass
class DaemonState:
    frames: int = 0
    faces_inferred: int = 0
    invalid_outputs: int = 0
    frame_errors: int = 0
    consecutive_errors: int = 0
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


def load_runtime(config: SensorConfig, bundle: Bundle, *, selftest: bool = True,
                 on_stage: Callable[[str], None] | None = None) -> ModelRuntime:
    """Everything the daemon does to a bundle before it runs it: open the backend (finding or building a
    TensorRT engine), pick the head runner, check the head file against the label spaces and the graph,
    and run the golden self-test through exactly that runtime. A failure closes what was opened."""
    try:
        runtime = ModelRuntime(bundle, config)
    except (ValueError, OSError, KeyError) as exc:
        raise BundleLoadError("bundle", str(exc) if str(bundle.path) in str(exc)
                              else f"bundle {bundle.path}: {exc}") from None
    except (BackendError, CudaUnavailableError) as exc:  # their messages already say what failed and why
        raise BundleLoadError("backend", f"bundle {bundle.path}: {exc}") from None
    except Exception as exc:
        raise BundleLoadError("backend", f"bundle {bundle.path}: cannot open the {config.model.backend} backend: "
                                         f"{type(exc).__name__}: {exc}") from None
    if selftest:
        if on_stage is not None:
            on_stage("self_testing")
        try:
            result = runtime.selftest()
        except Exception as exc:
            runtime.close()
            raise BundleLoadError("selftest", f"bundle {bundle.path}: self-test could not run: "
                                              f"{type(exc).__name__}: {exc}") from None
        log.info("%s: %s", bundle.manifest.name, result)
        if not result.passed:
            runtime.close()
            raise BundleLoadError("selftest", f"bundle {bundle.path}: {result}; refusing to run a model that "
                                              "does not reproduce its own golden outputs")
    return runtime


def load_processor(config: SensorConfig, bundle: Bundle, *, selftest: bool = True,
                   on_stage: Callable[[str], None] | None = None) -> FrameProcessor:
    """`load_runtime` plus the front end: what the daemon starts with and what the update agent checks before
    it switches `current`, so a bundle the daemon would refuse is refused before any daemon can start on it.
    The caller closes the processor (the agent does so right after the check)."""
    runtime = load_runtime(config, bundle, selftest=selftest, on_stage=on_stage)
    try:
        return FrameProcessor(bundle, config, device_id(config), runtime=runtime)
    except (ValueError, OSError) as exc:  # the runtime is closed by FrameProcessor
        raise BundleLoadError("bundle", f"bundle {bundle.path}: {exc}") from None


def open_processor(config: SensorConfig, path: Path | None = None, *, selftest: bool = True) -> FrameProcessor:
    """A processor for `path`, or for the bundle the config names; self-tested on its real runtime."""
    return load_processor(config, resolve_bundle(path if path is not None else bundle_dir(config)),
                          selftest=selftest)


class SwapWorker:
    """Loads and self-tests a candidate model runtime off the frame loop, so the old one keeps running."""

    def __init__(self, config: SensorConfig, path: Path | None) -> None:
        self.config, self.path = config, path
        self.runtime: ModelRuntime | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name="bundle-swap", daemon=True).start()

    def _run(self) -> None:
        try:
            bundle = resolve_bundle(self.path if self.path is not None else bundle_dir(self.config))
            self.runtime = load_runtime(self.config, bundle)
        except Exception as exc:  # any failure keeps the running model
            self.error = exc
        finally:
            self.done.set()

    def discard(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None


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
        self._log_slot_budget()
        self.store = BundleStore(self.config.update.bundles_dir) if self.config.update.enabled else None
        self.followed = self.bundle.path  # the link target last acted on
        self.swapper: SwapWorker | None = None
        self.queued_swap: tuple[SensorConfig, Path | None] | None = None
        self.last_frame_end: float | None = None
        self.swap_mark: float | None = None
        self.config_sinks: list[Sink] = self._sinks(self.config)
        self.extra_sinks: list[Sink] = list(extra_sinks or [])
        self.mqtt = None
        if self.config.mqtt.enabled:
            from edge.pipeline.mqtt_sink import MqttSink

            self.mqtt = MqttSink(self.config, self.processor.device_id)
            self.mqtt.announce(self.bundle.manifest, self.processor.runtime.describe())
        self.watchdog = Watchdog.from_env(self.notifier)
        self.latency = LatencyWindow()
        self.processed, self.captured, self.cpu = RateMeter(), RateMeter(), CpuMeter()
        self.tegrastats = TegraStats.start()  # None off a Jetson
        self.last_faces = 0
        self.exit_message: str | None = None

    @property
    def sinks(self) -> list[Sink]:
        return [*self.config_sinks, *self.extra_sinks, *([self.mqtt] if self.mqtt is not None else [])]

    def _log_slot_budget(self) -> None:
        d, h = self.config.detection, self.config.head
        most = d.max_faces * (d.track_max_missed + 1)
        if h.max_tracks < most:
            log.info("head.max_tracks %d < detection.max_faces %d x (track_max_missed %d + 1): when more tracks are "
                     "alive, the one seen longest ago restarts its smoothing (stats: slot_evictions)",
                     h.max_tracks, d.max_faces, d.track_max_missed)

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
            worker.discard()
        elif worker.runtime is None:
            where = str(worker.path) if worker.path is not None else "configured bundle"
            log.error("bundle swap refused, keeping %s: %s", self.bundle.manifest.name, worker.error)
            self.state.swap_error, self.state.swap_error_dir = str(worker.error), where
        else:
            old = self.bundle.manifest
            candidate = worker.runtime
            self.config = merge(self.config, worker.config, {"model", "head"})
            self.processor.swap(candidate, self.config)
            self.state.swaps += 1
            self.state.swap_error = self.state.swap_error_dir = None
            self.swap_mark = self.last_frame_end if self.last_frame_end is not None else time.monotonic()
            if self.mqtt is not None:
                self.mqtt.announce(candidate.bundle.manifest, candidate.describe())
            m = candidate.bundle.manifest
            log.info("now running bundle %s %s (build %d) from %s on %s, was %s %s", m.name, m.version, m.build,
                     candidate.bundle.path, candidate.describe(), old.name, old.version)
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
            frames=s.frames, faces_inferred=s.faces_inferred, invalid_outputs=s.invalid_outputs,
            frame_errors=s.frame_errors, swap_error=s.swap_error,
            swap_error_dir=s.swap_error_dir, last_swap_gap_ms=s.last_swap_gap_ms,
            followed=str(self.followed), swap_pending=self.swapper is not None or self.queued_swap is not None)
        try:
            write_report(self.config.update.health_file, report)
        except OSError as exc:
            log.warning("cannot write the health report %s: %s", self.config.update.health_file, exc)

    def _reload(self) -> None:
        """SIGHUP: apply the changed sections that can change live; name the ones that need a restart."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path, self.overrides)
        except Exception as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            self.notifier.ready("reload failed; running the previous config")
            return
        diff = diff_sections(self.config, config)
        for section in diff.restart:
            log.warning("config reload: restart needed for [%s] (changed; the running value stays until then)",
                        section)
        try:
            merged = merge(self.config, config, diff.live)
        except ValueError as exc:
            log.error("config reload: the changes to %s do not fit the sections that need a restart (%s); "
                      "restart needed for [%s]", ", ".join(f"[{s}]" for s in diff.live), exc, "], [".join(diff.live))
            self.notifier.ready("reload needs a restart")
            return
        try:
            path = bundle_dir(merged)
            # Only to see whether it changed: the swap verifies every hash before using it.
            new_manifest = resolve_bundle(path, verify_hashes=False).manifest
        except Exception as exc:
            log.error("config reload: bundle not usable, keeping the running one: %s", exc)
            new_manifest = None
        current = self.bundle.manifest
        changed = new_manifest is not None and (new_manifest.name, new_manifest.build, new_manifest.files) != (
            current.name, current.build, current.files)
        if changed or {"model", "head"} & set(diff.live):
            self.request_swap(merged, None)  # [model] and [head] take effect when the new runtime is ready
        live_now = tuple(s for s in diff.live if s not in ("model", "head"))
        self.config = merge(self.config, merged, live_now)
        if "detection" in live_now:
            self.processor.rebuild_front(self.config)
        if "sinks" in live_now:
            for sink in self.config_sinks:
                sink.close()
            self.config_sinks = self._sinks(self.config)
        for section in diff.live:
            log.info("config reload: [%s] %s", section, {
                "model": "applied with the next model swap", "head": "applied with the next model swap",
                "detection": "applied live (detector and tracker rebuilt: tracks restart)",
                "sinks": "applied live (sinks reopened)", "update": "agent-only keys: the update agent reads them "
                "when affect-sensor-update restarts"}.get(section, "applied live"))
        self.notifier.ready("reloaded" if not diff.restart else
                            f"reloaded; restart needed for {', '.join(f'[{s}]' for s in diff.restart)}")

    def run(self) -> int:
        capture = CaptureThread(lambda: open_source(self.config.source), self.config.source).start()
        started = time.monotonic()
        next_stats = started + self.config.stats.interval_s
        next_health = started
        reconnects = 0
        m = self.bundle.manifest
        self.notifier.ready(f"running {m.name} {m.version} on {self.processor.runtime.describe()}")
        log.info("started: device %s, source %s, bundle %s %s, backend %s, head %s", self.processor.device_id,
                 redact_url(self.config.source.uri), m.name, m.version, self.processor.backend.describe(),
                 self.processor.head.backend)
        code = 0
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
        except FrameFailureError as exc:
            self.exit_message = str(exc)
            log.critical("%s", exc)
            code = 1
        finally:
            self.notifier.stopping("stopping")
            self.watchdog.stop()
            capture.stop()
            for sink in self.sinks:
                sink.close()
            if self.swapper is not None:
                self.swapper.done.wait(timeout=30)
                self.swapper.discard()
            if self.tegrastats is not None:
                self.tegrastats.close()
            self.processor.close()
            log.info("stopped after %d frames", self.state.frames)
        return code

    def _process(self, frame) -> None:
        """One frame; an exception costs this frame (logged, counted), only a run of them ends the daemon."""
        epoch = time.time() - (time.monotonic() - frame.timestamp)
        try:
            result = self.processor.process(frame.image, self.state.frames, frame.timestamp, epoch)
        except Exception as exc:
            s = self.state
            s.frame_errors += 1
            s.consecutive_errors += 1
            limit = self.config.daemon.max_consecutive_frame_errors
            # The first of a run with its traceback, the rest as one line each: the journal stays readable.
            log.error("frame %d skipped (%d in a row, limit %d): %s: %s", s.frames + s.frame_errors,
                      s.consecutive_errors, limit, type(exc).__name__, exc, exc_info=s.consecutive_errors == 1)
            self.watchdog.heartbeat()  # the loop is alive; systemd must not kill it for a bad frame
            if s.consecutive_errors >= limit:
                raise FrameFailureError(
                    f"{s.consecutive_errors} frames in a row failed (last: {type(exc).__name__}: {exc}); "
                    "exiting so systemd restarts the daemon (daemon.max_consecutive_frame_errors)") from exc
            return
        self.state.consecutive_errors = 0
        self.state.frames += 1
        self.state.invalid_outputs += result.invalid
        self.state.faces_inferred += len(result.record.faces)
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
            sink.write(result.record, result.held)

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
            "software_version": __version__, "frame_errors": self.state.frame_errors,
            "invalid_outputs": self.state.invalid_outputs, "slot_evictions": self.processor.front.slot_evictions,
            "jetson": self.tegrastats.snapshot() if self.tegrastats is not None else None,
        }

    def _log_stats(self, capture: CaptureThread, uptime: float) -> None:
        s = self.stats_snapshot(capture, uptime)
        if self.mqtt is not None:
            self.mqtt.publish_stats(s, self.processor.bundle_ref)
        frame = s["latency_ms"].get("frame", {})
        log.info("stats: %.1f fps processed, %d dropped, frame latency p50 %s / p95 %s ms, cpu %.0f%%, rss %.0f MB",
                 s["processed_fps"], s["frames_dropped"], frame.get("p50"), frame.get("p95"), s["cpu_percent"],
                 s["rss_mb"])
