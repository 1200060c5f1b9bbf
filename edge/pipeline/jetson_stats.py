"""GPU load, power rails and temperatures of a Jetson for the stats payload, from `tegrastats`.

`tegrastats` (JetPack, /usr/bin/tegrastats) prints one line per interval; a
reader thread keeps the newest, and `snapshot()` parses it. Formats follow
NVIDIA's tegrastats documentation: `GR3D_FREQ X%@Y` (JetPack 6 on Orin prints
`GR3D_FREQ X%@[Y]`), temperatures as `name@47.5C`, power rails as
`VDD_IN 4364mW/4364mW` (current/average). Fields it does not print (or cannot
read as the service user) are left out. Off a Jetson `start()` returns None.
The parser is tested on lines written from those formats; it has not yet read
a real device's output (docs/jetson.md).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading

from edge.publish.payloads import JetsonStats

log = logging.getLogger(__name__)
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+)(?:,[^\]\s]*)?\]?)?")
_TEMP = re.compile(r"\b([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB\b")


def parse_tegrastats(line: str) -> JetsonStats | None:
    """One tegrastats line -> the figures it holds; None for a line with none of them."""
    gpu = _GPU.search(line)
    ram = _RAM.search(line)
    temps = {name.lower(): float(value) for name, value in _TEMP.findall(line)}
    rails = {name: float(current) for name, current, _ in _RAIL.findall(line)}
    if gpu is None and ram is None and not temps and not rails:
        return None
    return JetsonStats(
        gpu_load_percent=float(gpu.group(1)) if gpu else None,
        gpu_freq_mhz=float(gpu.group(2)) if gpu and gpu.group(2) else None,
        ram_used_mb=float(ram.group(1)) if ram else None,
        ram_total_mb=float(ram.group(2)) if ram else None,
        temperatures_c=temps, power_mw=rails,
    )


class TegraStats:
    """A `tegrastats --interval` child process and the newest line it printed."""

    def __init__(self, program: str, interval_ms: int = 1000) -> None:
        self._line = ""
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([program, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        threading.Thread(target=self._read, name="tegrastats", daemon=True).start()

    @classmethod
    def start(cls, program: str | None = None) -> TegraStats | None:
        found = program or shutil.which("tegrastats") or shutil.which("/usr/bin/tegrastats")
        if found is None:
            return None
        try:
            return cls(found)
        except OSError as exc:
            log.info("tegrastats not available (%s): no Jetson figures in the stats", exc)
            return None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._lock:
                self._line = line.strip()

    def snapshot(self) -> JetsonStats | None:
        with self._lock:
            line = self._line
        return parse_tegrastats(line) if line else None

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
