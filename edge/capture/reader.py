"""Capture thread: reads a FrameSource into a LatestFrameSlot and keeps the camera alive.

Camera loss (a read error, or no frame for `stall_timeout_s`) closes the source
and reopens it after a capped exponential back-off; the thread never gives up
on a live source and logs each loss and recovery. Finite sources (files,
folders without `loop`) end by closing the slot.

A stalled read cannot be interrupted from its own thread, so a small watchdog
thread closes the source under it (cv2.VideoCapture.release unblocks a pending
read); the reader then sees the failure and reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.capture.backoff import Backoff
from edge.capture.frame import Frame, FrameSource, SourceError
from edge.capture.slot import LatestFrameSlot
from edge.config.models import SourceConfig

log = logging.getLogger(__name__)


@dataclass
class CaptureStats:
    frames: int = 0
    dropped: int = 0  # frames replaced in the slot before the processing loop took them
    skipped: int = 0  # undecodable files in an image folder
    read_failures: int = 0
    stalls: int = 0
    reconnects: int = 0  # successful re-opens after a loss
    open_failures: int = 0
    connected: bool = False
    last_error: str = ""


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
        self._source: FrameSource | None = None
        self._last_frame = time.monotonic()
        self._stalled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="capture-watchdog", daemon=True)

    def start(self) -> CaptureThread:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            source = self._source
        if source is not None:
            source.close()
        self._thread.join(timeout)
        self._watchdog.join(timeout)
        self.slot.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> CaptureStats:
        with self._lock:
            snapshot = CaptureStats(**vars(self._stats))
        snapshot.dropped = self.slot.dropped
        return snapshot

    def _run(self) -> None:
        backoff = Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        ever_connected = False
        try:
            while not self._stop.is_set():
                source = self._opener()
                try:
                    source.open()
                except SourceError as exc:
                    self._note_failure("open_failures", str(exc))
                    if not source.live and not ever_connected:
                        log.error("%s; giving up (not a live source)", exc)
                        return
                    delay = backoff.next_delay()
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    self._sleep(delay)
                    continue
                with self._lock:
                    self._source = source
                    self._stats.connected = True
                    if ever_connected:
                        self._stats.reconnects += 1
                log.info("%s %s", "reconnected to" if ever_connected else "opened", source.description)
                ever_connected = True
                backoff.reset()
                self._last_frame = time.monotonic()
                finished = self._pump(source)
                with self._lock:
                    self._source = None
                    self._stats.connected = False
                    self._stats.skipped += getattr(source, "skipped", 0)
                source.close()
                if finished:
                    log.info("%s ended", source.description)
                    return
                if not self._stop.is_set():
                    delay = backoff.next_delay()
                    log.warning("lost %s; reconnecting in %.1f s", source.description, delay)
                    self._sleep(delay)
        finally:
            self.slot.close()

    def _pump(self, source: FrameSource) -> bool:
        """Read until the source ends (True) or fails (False)."""
        self._stalled.clear()
        while not self._stop.is_set():
            try:
                frame = source.read()
            except SourceError as exc:
                if self._stalled.is_set() or self._stop.is_set():
                    return self._stop.is_set()
                self._note_failure("read_failures", str(exc))
                log.warning("%s", exc)
                return False
            except Exception as exc:  # a driver bug must not kill the daemon: treat it as a loss
                if self._stop.is_set():
                    return True
                self._note_failure("read_failures", f"{source.description}: {type(exc).__name__}: {exc}")
                log.exception("unexpected error reading %s", source.description)
                return False
            if self._stalled.is_set():
                return False
            if frame is None:
                return True
            self._last_frame = time.monotonic()
            with self._lock:
                self._stats.frames += 1
            self.slot.put(frame)
            if not source.live:
                while not self.slot.wait_taken(0.25):
                    if self._stop.is_set():
                        return True
                    self._last_frame = time.monotonic()  # a slow consumer is not a stalled source
        return True

    def _watch(self) -> None:
        period = min(0.5, self.config.stall_timeout_s / 4)
        while not self._stop.wait(period):
            with self._lock:
                source = self._source
            if source is None or self._stalled.is_set():
                continue
            idle = time.monotonic() - self._last_frame
            if idle > self.config.stall_timeout_s:
                self._stalled.set()
                self._note_failure("stalls", f"no frame from {source.description} for {idle:.1f} s")
                log.warning("no frame from %s for %.1f s; closing it to reconnect", source.description, idle)
                source.close()

    def _note_failure(self, counter: str, message: str) -> None:
        with self._lock:
            setattr(self._stats, counter, getattr(self._stats, counter) + 1)
            self._stats.last_error = message
