"""Outputs that are written piece by piece (a CSV row per frame, a video frame by frame) but must appear whole.

`edge.fsutil.atomic_write` needs the bytes up front; a long video's CSV or its
annotated copy is better streamed. `AtomicOutput` hands out a temp path in the
target's directory (same filesystem, so the rename is atomic), and `commit()`
fsyncs it and renames it over the target; anything else removes it, so a
crash or Ctrl-C never leaves a torn file where a finished one is expected.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

from edge.fsutil import fsync_dir


def file_mode() -> int:
    """Permissions a plain `open(path, "w")` would give (temp files start private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class AtomicOutput:
    """`with AtomicOutput(target) as out: write(out.temp); out.commit()`; without `commit()` nothing appears."""

    def __init__(self, target: Path) -> None:
        self.target = target
        # Keep the suffix: OpenCV's VideoWriter picks the container from it.
        fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
        os.close(fd)
        self.temp = Path(name)
        self.committed = False

    def commit(self) -> None:
        fd = os.open(self.temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(self.temp, file_mode())
        os.replace(self.temp, self.target)
        fsync_dir(self.target.parent)
        self.committed = True

    def discard(self) -> None:
        if not self.committed:
            self.temp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()
