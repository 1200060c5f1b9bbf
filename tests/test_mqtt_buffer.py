"""Offline outbox bounds and order, on disk and in memory; trailing-edge rate limit (pure, no broker)."""

from __future__ import annotations

import pytest

from edge.publish.buffer import Outbox
from edge.publish.ratelimit import TrailingRateLimiter


def _fill(box: Outbox, n: int, start: int = 0) -> int:
    return sum(box.add("t", f"m{i:04d}".encode(), 1) for i in range(start, start + n))


def test_drops_oldest_at_count_bound_exactly():
    box = Outbox(max_messages=10, max_bytes=1 << 20)
    assert _fill(box, 25) == 15 and box.dropped == 15 and len(box) == 10
    assert [q.payload for q in box.take(100)] == [f"m{i:04d}".encode() for i in range(15, 25)]


def test_byte_bound_and_inflight_messages_are_never_dropped():
    box = Outbox(max_messages=100, max_bytes=25)  # five 5-byte messages
    _fill(box, 5)
    inflight = box.take(2)
    assert [q.payload for q in inflight] == [b"m0000", b"m0001"] and box.inflight == 2
    assert _fill(box, 4, start=5) == 2  # 3 waiting + 4 new = 35 bytes > 25: the 2 oldest *waiting* go
    assert box.nbytes == 25 and len(box) == 5
    box.acked(inflight[0].id)
    box.acked(inflight[1].id)
    assert box.inflight == 0
    assert [q.payload for q in box.take(10)] == [b"m0004", b"m0005", b"m0006", b"m0007", b"m0008"]


def test_disk_buffer_survives_reopen_in_order(tmp_path):
    box = Outbox(max_messages=100, max_bytes=1 << 20, directory=tmp_path / "buf")
    _fill(box, 6)
    sent = box.take(2)
    box.acked(sent[0].id)  # acknowledged before the "restart"; sent[1] was not
    box.close()
    again = Outbox(max_messages=3, max_bytes=1 << 20, directory=tmp_path / "buf")  # smaller bound after restart
    assert again.dropped == 2 and len(again) == 3
    assert [q.payload for q in again.take(10)] == [b"m0003", b"m0004", b"m0005"]
    again.close()


def test_unwritable_buffer_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="buffer_dir"):
        Outbox(10, 1000, directory=blocker / "sub")


def test_trailing_rate_limit_always_sends_the_latest():
    lim: TrailingRateLimiter[int] = TrailingRateLimiter(max_hz=2.0)  # 0.5 s interval
    assert lim.offer(1, now=0.0) == 1
    assert lim.offer(2, now=0.1) is None
    assert lim.offer(3, now=0.2) is None  # supersedes 2
    assert lim.due(0.4) is None and lim.next_due() == pytest.approx(0.5)
    assert lim.due(0.5) == 3
    assert lim.due(2.0) is None  # nothing held
    assert lim.offer(4, now=2.0) == 4
    assert lim.superseded == 1


def test_rate_limit_zero_means_unlimited():
    lim: TrailingRateLimiter[int] = TrailingRateLimiter(max_hz=0)
    assert [lim.offer(i, now=0.0) for i in range(3)] == [0, 1, 2]
