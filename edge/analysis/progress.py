"""A one-line progress bar on stderr for long runs: frames done, fps, ETA. Only on a terminal: redirected to a
file or a pipe (CI logs, `2> log`) it prints nothing, so logs hold no carriage-return noise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int | None, stream: TextIO | None = None, enabled: bool | None = None,
                 label: str = "analyze", min_interval_s: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled if enabled is not None else self.stream.isatty()
        self.total = total if total and total > 0 else None
        self.label, self.min_interval_s = label, min_interval_s
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = float("-inf")
        self._width = 0

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self._start
        fps = self.done / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            return f"{self.label} {self.done} frames  {fps:.1f} fps  {_clock(elapsed)} elapsed"
        done = min(self.done, self.total)  # a container's frame count can be an underestimate
        filled = round(WIDTH * done / self.total)
        eta = (self.total - done) / fps if fps > 0 else None
        return (f"{self.label} [{'#' * filled}{'-' * (WIDTH - filled)}] {done}/{self.total} frames  "
                f"{fps:.1f} fps  ETA {_clock(eta) if eta is not None else '?'}")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval_s or (self.total is not None and self.done >= self.total):
            self._draw(self.line(now))
            self._last_draw = now

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """Erase the bar, so whatever is printed next starts on a clean line."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
