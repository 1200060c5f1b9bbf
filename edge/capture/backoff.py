"""Capped exponential back-off for camera reconnects."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    initial_s: float
    max_s: float
    factor: float = 2.0
    failures: int = 0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError(f"bad back-off: initial {self.initial_s}, max {self.max_s}, factor {self.factor}")

    def next_delay(self) -> float:
        """Delay before the next attempt; each call counts one more failure."""
        delay = min(self.max_s, self.initial_s * self.factor ** self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
