"""A captured frame and the interface every frame source implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # HxWx3 uint8 BGR
    index: int  # per-source counter, from 0 at the first frame after each open
    timestamp: float  # time.monotonic() at capture
    source: str  # where it came from (file name for folders and videos, else the URI)


class SourceError(RuntimeError):
    """A source cannot be opened or has failed; the capture thread reconnects on it."""


class SourceTimeout(SourceError):
    """A read gave up after the backend's own read timeout: the camera stalled (counted as a stall)."""


class FrameSource(Protocol):
    """Blocking reader. `read` returns a frame, None at a clean end (file/folder done), or raises SourceError.

    Only the thread that reads a source may close it. A source whose backend bounds its blocking calls says
    so in optional float attributes `open_timeout_s` / `read_timeout_s` (edge/capture/reader.py uses them).
    """

    description: str
    live: bool  # a camera/stream: reconnect forever; files end (or loop)

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...
