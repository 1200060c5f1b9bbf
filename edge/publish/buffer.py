"""Bounded outbox for QoS >= 1 messages: kept until the broker acknowledges them.

One sqlite table serves both modes: `:memory:` by default, a file in
`buffer_dir` when the backlog must survive a restart. When the bound (count or
bytes) is exceeded the oldest messages *not yet handed to the broker* are
dropped and counted; messages already in flight are the MQTT session's to
retry. Row ids give the order; a drain is in insertion order.

Used by the publisher thread only (one owner, no locking needed beyond sqlite's).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

BUFFER_FILE = "mqtt-outbox.sqlite"


@dataclass(frozen=True)
class Queued:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    def __init__(self, max_messages: int, max_bytes: int, directory: Path | None = None) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("buffer bounds must be >= 1")
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.dropped = 0
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(f"MQTT buffer_dir {directory}: {exc.strerror}") from exc
            target = str(directory / BUFFER_FILE)
        else:
            target = ":memory:"
        try:
            self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL" if directory is not None else "PRAGMA journal_mode=MEMORY")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
            )
            count, nbytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        except sqlite3.DatabaseError as exc:
            raise OSError(f"MQTT offline buffer {target}: {exc}") from exc
        # After a (re)open nothing is in flight: whatever the file holds waits to be sent again.
        self._cursor = 0  # highest id handed to the broker connection
        self._inflight: dict[int, int] = {}  # id -> payload bytes
        self._waiting, self._waiting_bytes = int(count), int(nbytes)
        self._trim()

    def __len__(self) -> int:
        """Messages waiting to be handed to the broker (not counting those in flight)."""
        return self._waiting

    @property
    def nbytes(self) -> int:
        return self._waiting_bytes

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def add(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Append a message; returns how many of the oldest waiting messages the bound made it drop."""
        before = self.dropped
        self._db.execute("INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                         (topic, payload, qos, int(retain)))
        self._waiting += 1
        self._waiting_bytes += len(payload)
        self._trim()
        return self.dropped - before

    def _trim(self) -> None:
        # A single message larger than max_bytes is still kept: dropping it could never help.
        while self._waiting > self.max_messages or (self._waiting_bytes > self.max_bytes and self._waiting > 1):
            row_id, size = self._db.execute(
                "SELECT id, LENGTH(payload) FROM outbox WHERE id > ? ORDER BY id LIMIT 1", (self._cursor,)
            ).fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._waiting -= 1
            self._waiting_bytes -= size
            self.dropped += 1

    def take(self, limit: int) -> list[Queued]:
        """The oldest waiting messages, at most `limit`, now marked in flight."""
        if limit <= 0 or not self._waiting:
            return []
        rows = self._db.execute(
            "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (self._cursor, limit)).fetchall()
        out = [Queued(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]
        for q in out:
            self._inflight[q.id] = len(q.payload)
            self._waiting -= 1
            self._waiting_bytes -= len(q.payload)
        if out:
            self._cursor = out[-1].id
        return out

    def acked(self, row_id: int) -> None:
        """The broker has the message (or refused it for good): forget it."""
        if self._inflight.pop(row_id, None) is not None:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def close(self) -> None:
        self._db.close()
