"""Capture thread: reads a FrameSource into a LatestFrameSlot and keeps the camera alive.

Camera loss (a failed open, a read error, a read that times out) closes the source and reopens it
after a capped exponential back-off; a live source is never given up and each loss and recovery is
logged. Finite sources (files, folders without `loop`) end by closing the slot.

Only the thread that reads a source ever closes it. Releasing a cv2.VideoCapture while another thread
is blocked in its read() frees what that read is using: against a hung RTSP camera it crashed the
daemon (segmentation fault, exit 139; heap corruption stand-alone). Blocking calls are bounded by the
backend's own timeouts instead (OpenCVSource gives FFmpeg CAP_PROP_OPEN/READ_TIMEOUT_MSEC), so a hung
camera surfaces as a failed call on the capture thread itself, which closes it and reconnects.

For a backend that ignores its bound (or has none we can set: picamera2, a GStreamer pipeline), a
watchdog times every blocking call. One still running at twice its limit is declared hung and its
worker thread is *abandoned*, never interrupted: it keeps its source, closes it itself if the call
ever returns, and touches nothing else; a fresh worker reconnects after the usual back-off. At most
MAX_HUNG abandoned workers are kept; past that the capture waits for one of them to return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.capture.backoff import Backoff
from edge.capture.frame import Frame, FrameSource, SourceError, SourceTimeout
from edge.capture.slot import LatestFrameSlot
from edge.config.models import SourceConfig

log = logging.getLogger(__name__)

MAX_HUNG = 2  # abandoned workers still blocked in a call; each may hold a capture (and its memory)
HUNG_FACTOR = 2.0  # a call running this many times its limit is hung
MIN_OPEN_LIMIT_S = 10.0  # limit for the open of a source that declares no open timeout


@dataclass
class CaptureStats:
    frames: int = 0
    dropped: int = 0  # frames replaced in the slot before the processing loop took them
    skipped: int = 0  # undecodable files in an image folder
    read_failures: int = 0
    stalls: int = 0  # reads that timed out (no frame for stall_timeout_s), and hung calls
    hung: int = 0  # workers abandoned in a call that ignored its timeout
    reconnects: int = 0  # successful re-opens after a loss
    open_failures: int = 0
    connected: bool = False
    last_error: str = ""


class _Worker:
    """One capture thread and the blocking call it is in (what, started, limit), if any."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.thread: threading.Thread | None = None
        self.call: tuple[str, float, float] | None = None
        self.description = ""
        self.abandoned = False


class CaptureThread:
    def __init__(self, opener: Callable[[], FrameSource], config: SourceConfig,
                 slot: LatestFrameSlot[Frame] | None = None, sleep: Callable[[float], bool] | None = None) -> None:
        """`opener` builds a fresh, unopened source (edge.capture.open_source bound to the config)."""
        self._opener = opener
        self.config = config
        self.slot: LatestFrameSlot[Frame] = slot if slot is not None else LatestFrameSlot()
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._lock = threading.Lock()
        self._stats = CaptureStats()
        self._backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        self._ever_connected = False
        self._workers = 0
        self._worker: _Worker | None = None
        self._hung: list[_Worker] = []
        self._hung_full_logged = False
        self._watchdog = threading.Thread(target=self._watch, name="capture-watchdog", daemon=True)

    def start(self) -> CaptureThread:
        with self._lock:
            self._spawn(0.0)
        self._watchdog.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop and wait for the worker to close its source: one frame on a flowing stream, at most the
        current call's own bound on a silent one (or `timeout`). A hung worker is not waited for."""
        self._stop.set()
        with self._lock:
            worker = self._worker
        if worker is not None and worker.thread is not None and worker.thread is not threading.current_thread():
            worker.thread.join(timeout if timeout is not None else self._stop_wait(worker))
            if worker.thread.is_alive():
                call = worker.call
                log.warning("capture thread still in %s of %s at stop; leaving it (it releases its source itself)",
                            call[0] if call else "a call", worker.description)
        if self._watchdog.ident is not None:
            self._watchdog.join(1.0)
        self.slot.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the capture to end by itself (a finite source); True once it has."""
        with self._lock:
            worker = self._worker
        if worker is not None and worker.thread is not None:
            worker.thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        with self._lock:
            worker = self._worker
        return worker is not None and worker.thread is not None and worker.thread.is_alive()

    def stats(self) -> CaptureStats:
        with self._lock:
            snapshot = CaptureStats(**vars(self._stats))
        snapshot.dropped = self.slot.dropped
        return snapshot

    # ------------------------------------------------------------------ worker

    def _spawn(self, delay: float) -> None:
        """Start a new worker (lock held); it waits `delay` s first (the back-off after a hung one)."""
        self._workers += 1
        worker = _Worker(self._workers)
        worker.thread = threading.Thread(target=self._run, args=(worker, delay), name=f"capture-{worker.number}",
                                         daemon=True)
        self._worker = worker
        worker.thread.start()

    def _stop_wait(self, worker: _Worker) -> float:
        call = worker.call
        if call is None:
            return 2.0
        _, started, limit = call
        return max(0.0, started + limit - time.monotonic()) + 2.0

    def _limits(self, source: FrameSource) -> tuple[float, float]:
        open_limit = getattr(source, "open_timeout_s", None) or max(MIN_OPEN_LIMIT_S, self.config.stall_timeout_s)
        read_limit = getattr(source, "read_timeout_s", None) or self.config.stall_timeout_s
        return open_limit, read_limit

    def _call(self, worker: _Worker, what: str, limit: float, fn: Callable[[], Frame | None]) -> Frame | None:
        with self._lock:
            worker.call = (what, time.monotonic(), limit)
        try:
            return fn()
        finally:
            with self._lock:
                worker.call = None

    def _run(self, worker: _Worker, delay: float) -> None:
        ends_capture = True
        try:
            if delay > 0:
                self._sleep(delay)
            while not self._stop.is_set() and not worker.abandoned:
                source = self._opener()
                worker.description = source.description
                open_limit, read_limit = self._limits(source)
                try:
                    self._call(worker, "open", open_limit, source.open)
                except SourceError as exc:
                    if worker.abandoned:
                        return
                    self._note_failure("open_failures", str(exc))
                    if self._stop.is_set():
                        log.warning("%s (while stopping)", exc)
                        return
                    if not source.live and not self._ever_connected:
                        log.error("%s; giving up (not a live source)", exc)
                        return
                    delay = self._backoff.next_delay()
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    self._sleep(delay)
                    continue
                if worker.abandoned:  # the open came back after the watchdog gave up on it
                    source.close()
                    return
                with self._lock:
                    self._stats.connected = True
                    if self._ever_connected:
                        self._stats.reconnects += 1
                log.info("%s %s", "reconnected to" if self._ever_connected else "opened", source.description)
                self._ever_connected = True
                self._backoff.reset()
                finished = self._pump(worker, source, read_limit)
                with self._lock:
                    if not worker.abandoned:
                        self._stats.connected = False
                        self._stats.skipped += getattr(source, "skipped", 0)
                source.close()  # on this thread, the one that read it
                if worker.abandoned:
                    log.info("an abandoned capture thread came back from %s; it released its source",
                             source.description)
                    return
                if finished:
                    log.info("%s %s", "closed" if self._stop.is_set() else "end of", source.description)
                    return
                if not self._stop.is_set():
                    delay = self._backoff.next_delay()
                    log.warning("lost %s; reconnecting in %.1f s", source.description, delay)
                    self._sleep(delay)
        finally:
            with self._lock:
                ends_capture = not worker.abandoned
            if ends_capture:
                self.slot.close()

    def _pump(self, worker: _Worker, source: FrameSource, read_limit: float) -> bool:
        """Read until the source ends (True) or fails (False)."""
        while not self._stop.is_set():
            try:
                frame = self._call(worker, "read", read_limit, source.read)
            except SourceTimeout as exc:  # the backend's own read timeout: the camera stalled
                if worker.abandoned or self._stop.is_set():
                    return self._stop.is_set()
                self._note_failure("stalls", str(exc))
                log.warning("%s", exc)
                return False
            except SourceError as exc:
                if worker.abandoned or self._stop.is_set():
                    return self._stop.is_set()
                self._note_failure("read_failures", str(exc))
                log.warning("%s", exc)
                return False
            except Exception as exc:  # a driver bug must not kill the daemon: treat it as a loss
                if worker.abandoned or self._stop.is_set():
                    return self._stop.is_set()
                self._note_failure("read_failures", f"{source.description}: {type(exc).__name__}: {exc}")
                log.exception("unexpected error reading %s", source.description)
                return False
            if worker.abandoned:
                return False
            if frame is None:
                return True
            with self._lock:
                self._stats.frames += 1
            self.slot.put(frame)
            if not source.live:
                while not self.slot.wait_taken(0.25):
                    if self._stop.is_set():
                        return True
        return True

    # ---------------------------------------------------------------- watchdog

    def _watch(self) -> None:
        period = min(0.5, self.config.stall_timeout_s / 4)
        while not self._stop.wait(period):
            with self._lock:
                self._hung = [w for w in self._hung if w.thread is not None and w.thread.is_alive()]
                worker = self._worker
                if worker is None or worker.call is None:
                    continue
                what, started, limit = worker.call
                blocked = time.monotonic() - started
                if blocked <= HUNG_FACTOR * limit:
                    continue
                if len(self._hung) >= MAX_HUNG:
                    self._stats.connected = False
                    if not self._hung_full_logged:
                        self._hung_full_logged = True
                        log.error("%s of %s blocked for %.0f s and %d earlier capture threads are still hung; "
                                  "waiting for one to return before reconnecting", what, worker.description,
                                  blocked, len(self._hung))
                    continue
                self._hung_full_logged = False
                worker.abandoned = True
                self._hung.append(worker)
                self._stats.hung += 1
                self._stats.stalls += 1
                self._stats.connected = False
                message = (f"{what} of {worker.description} blocked for {blocked:.1f} s, past its "
                           f"{limit:.1f} s limit")
                self._stats.last_error = message
                delay = self._backoff.next_delay()
                log.error("%s; abandoning that capture thread (it releases the source itself if the call returns)"
                          " and reconnecting in %.1f s", message, delay)
                self._spawn(delay)

    def _note_failure(self, counter: str, message: str) -> None:
        with self._lock:
            setattr(self._stats, counter, getattr(self._stats, counter) + 1)
            self._stats.last_error = message
