"""Running statistics of the daemon: stage latencies, rates, and what the OS says about the process.

Latency percentiles are over a bounded window of recent frames (a deque), so a
long-running daemon reports current behaviour and its memory stays flat.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WINDOW = 1000


def summarize(samples_ms: Iterable[float]) -> dict[str, float]:
    """Mean, p50/p95/p99, max and count of a latency sample (ms)."""
    arr = np.fromiter(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "max": float(arr.max()), "n": len(arr)}


@dataclass
class LatencyWindow:
    size: int = WINDOW
    samples: dict[str, deque] = field(default_factory=dict)

    def add(self, stage: str, ms: float) -> None:
        self.samples.setdefault(stage, deque(maxlen=self.size)).append(ms)

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.samples.items():
            if values:
                s = summarize(values)
                out[stage] = {k: round(s[k], 3) for k in ("p50", "p95", "p99", "max")}
        return out


@dataclass
class RateMeter:
    """Events per second since the previous `rate()` call."""

    count: int = 0
    _last_count: int = 0
    _last_time: float = field(default_factory=time.monotonic)

    def tick(self, n: int = 1) -> None:
        self.count += n

    def rate(self) -> float:
        now = time.monotonic()
        elapsed = max(now - self._last_time, 1e-9)
        value = (self.count - self._last_count) / elapsed
        self._last_count, self._last_time = self.count, now
        return value


@dataclass
class CpuMeter:
    """Process CPU% (all threads; 100 = one core) since the previous reading."""

    _cpu: float = field(default_factory=time.process_time)
    _wall: float = field(default_factory=time.monotonic)

    def percent(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        value = 100.0 * (cpu - self._cpu) / max(wall - self._wall, 1e-9)
        self._cpu, self._wall = cpu, wall
        return value


def rss_mb() -> float:
    """Resident set size now (from /proc where available, else the peak from getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soc_temperature_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """Hottest thermal zone (Jetson: CPU/GPU/SoC zones), or None where none is readable."""
    readings = []
    for zone in root.glob("thermal_zone*/temp"):
        try:
            readings.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(readings) if readings else None
