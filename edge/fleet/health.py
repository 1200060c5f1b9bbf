"""The daemon's health report, a small JSON file the update agent watches after a switch.

A file rather than MQTT so the health window works with the broker down and
needs no extra subscription; it lives on tmpfs (`/run/affect-sensor`) because
it is rewritten every half second. It is written atomically, so the agent
never reads half of it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.fsutil import atomic_write

REPORT_INTERVAL_S = 0.5


class HealthReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pid: int
    ts: float = Field(description="wall-clock seconds when written")
    bundle_dir: str = Field(description="resolved directory of the bundle being run")
    build: int
    frames: int = Field(ge=0, description="frames processed since start")
    faces_inferred: int = Field(default=0, ge=0, description="faces the model gave valid outputs for since start")
    invalid_outputs: int = Field(ge=0, description="faces whose outputs were not finite probabilities")
    frame_errors: int = Field(default=0, ge=0, description="frames that raised and were skipped since start")
    swap_error: str | None = Field(default=None, description="why the last swap was refused")
    swap_error_dir: str | None = None
    last_swap_gap_ms: float | None = Field(default=None, description="longest pause between frames at the last swap")
    followed: str | None = Field(default=None, description="the store's `current` link target the daemon last acted on")
    swap_pending: bool = Field(default=False, description="a bundle load is in flight or queued")

    def age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.ts


def write_report(path: Path, report: HealthReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, report.model_dump_json().encode())


def read_report(path: Path) -> HealthReport | None:
    """The last report, or None when there is none (daemon not running, or never reported)."""
    try:
        return HealthReport.model_validate(json.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError):
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
