"""Where result records go besides MQTT: JSON-lines files and stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Protocol

from edge.publish.payloads import ResultRecord


class Sink(Protocol):
    def write(self, record: ResultRecord, held: tuple[int, ...] = ()) -> None:
        """`held`: tracks in view without a result this frame (non-finite outputs): not gone."""
        ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON record per line; line-buffered so a crash loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8", buffering=1)

    def write(self, record: ResultRecord, held: tuple[int, ...] = ()) -> None:
        self._file.write(record.model_dump_json(exclude_none=True) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


class StdoutSink:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def write(self, record: ResultRecord, held: tuple[int, ...] = ()) -> None:
        self._stream.write(record.model_dump_json(exclude_none=True) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
