"""Trailing-edge rate limit: at most one item per interval, and the newest item is never lost.

A dashboard must end up showing the latest state: when results arrive faster
than the limit, the newest one is held and sent when the interval has passed,
replacing any older held one (counted as superseded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class TrailingRateLimiter(Generic[T]):
    max_hz: float  # 0: no limit
    superseded: int = 0
    _last_sent: float | None = field(default=None, repr=False)
    _held: T | None = field(default=None, repr=False)
    _has_held: bool = field(default=False, repr=False)

    @property
    def interval(self) -> float:
        return 0.0 if self.max_hz <= 0 else 1.0 / self.max_hz

    def offer(self, item: T, now: float) -> T | None:
        """The item to send now, or None when it is held for the trailing edge."""
        if self._last_sent is None or now - self._last_sent >= self.interval:
            self._last_sent = now
            if self._has_held:  # an older held item is obsolete once a newer one goes out
                self.superseded += 1
                self._held, self._has_held = None, False
            return item
        if self._has_held:
            self.superseded += 1
        self._held, self._has_held = item, True
        return None

    def due(self, now: float) -> T | None:
        """The held item once its interval has passed, else None."""
        if self._has_held and self._last_sent is not None and now - self._last_sent >= self.interval:
            item = self._held
            self._held, self._has_held = None, False
            self._last_sent = now
            return item
        return None

    def flush(self) -> T | None:
        """The held item now, whatever the interval (at shutdown: the latest must not be lost)."""
        if not self._has_held:
            return None
        item = self._held
        self._held, self._has_held = None, False
        return item

    def next_due(self) -> float | None:
        """When `due` will release the held item (None: nothing held)."""
        if not self._has_held or self._last_sent is None:
            return None
        return self._last_sent + self.interval
