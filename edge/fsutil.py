"""Crash-safe file writes: the one helper every file the project writes goes through.

A device can lose power at any moment: a file is written to a unique temp name
in the same directory, fsynced, renamed over the target, and the directory
fsynced, so a reader sees either the old file or the new one, never a torn one.
`atomic_write` takes the bytes; `atomic_writer` hands out the open temp file
for writers that stream (tar, torch.save, np.savez).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_mode() -> int:
    """Permissions a plain `open(path, "wb")` would give (mkstemp's temp files start private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_writer(path: Path | str, mode: int | None = None) -> Iterator[BinaryIO]:
    """`with atomic_writer(p) as f: f.write(...)`: `p` appears complete when the block ends, or not at all.

    The parent directory must exist. `mode` sets the permissions before the
    rename (default: what the umask gives a new file).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically (parent directory must exist); `mode` sets permissions first."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)
