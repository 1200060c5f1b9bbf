"""Latest-frame slot: the hand-off between the capture thread and the processing loop.

It holds one frame. A new frame replaces an unread one, which is counted as
dropped: the processing loop always works on the newest frame, latency stays
one frame, and memory never grows when processing is slower than the camera.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.put_count += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The newest unread frame, waiting up to `timeout` s; None on timeout or once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def wait_taken(self, timeout: float | None = None) -> bool:
        """Wait until the reader has taken the pending item (or the slot closed); False on timeout.

        Files and folders are not live: their capture side waits here instead of
        dropping frames, so every frame of a recording is processed.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._item is None or self._closed, timeout)

    def close(self) -> None:
        """Wake waiting readers; the capture side calls this when the source has ended for good."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed
