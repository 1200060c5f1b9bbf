"""Latest-frame slot and the reconnecting capture thread.

The flaky and hanging sources below are small fakes at the camera-driver edge
(what cv2.VideoCapture / picamera2 would do when a cable is pulled or a driver
hangs); everything above them is the real code.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge.capture import Backoff, CaptureThread, Frame, LatestFrameSlot, SourceError
from edge.config.models import SourceConfig

IMAGE = np.zeros((4, 4, 3), np.uint8)


def test_slot_keeps_only_the_newest_and_counts_drops():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get(0) == 4
    assert slot.dropped == 4 and slot.put_count == 5
    assert slot.get(0.01) is None  # empty: nothing is replayed
    slot.put(5)
    assert slot.get(0) == 5 and slot.dropped == 4
    slot.close()
    assert slot.get(1.0) is None and slot.closed


def test_slot_with_slow_consumer_drops_instead_of_queueing():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            slot.put(i)
            i += 1
            time.sleep(0.001)

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    for _ in range(5):
        item = slot.get(1.0)
        seen.append(item)
        time.sleep(0.02)  # consumer is much slower than the producer
    stop.set()
    producer.join()
    assert seen == sorted(seen) and len(set(seen)) == 5
    assert slot.dropped > 20  # most frames were dropped, and counted
    assert slot.put_count - slot.dropped <= len(seen) + 1  # nothing else is held back


def test_backoff_doubles_up_to_the_cap_and_resets():
    b = Backoff(0.5, 3.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next_delay() == 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


class FlakyCamera:
    """Fake driver: opens fail while `down`; reads fail after `fail_after` frames of each session."""

    live = True
    description = "flaky test camera"

    def __init__(self, world: dict) -> None:
        self.world = world
        self.frames = 0

    def open(self) -> None:
        self.world["opens"] += 1
        if self.world["down"] > 0:
            self.world["down"] -= 1
            raise SourceError("cannot open flaky test camera")

    def read(self) -> Frame | None:
        time.sleep(0.002)
        if self.frames >= self.world["fail_after"]:
            self.world["down"] = self.world.pop("down_after_failure", 0)
            raise SourceError("read failed on flaky test camera")
        self.frames += 1
        self.world["total"] += 1
        return Frame(IMAGE, self.frames, time.monotonic(), self.description)

    def close(self) -> None:
        pass


def test_source_that_fails_mid_run_reconnects_with_backoff():
    world = {"opens": 0, "down": 0, "fail_after": 20, "down_after_failure": 2, "total": 0}
    delays: list[float] = []
    config = SourceConfig(uri="demo", reconnect_initial_s=0.01, reconnect_max_s=0.04)
    capture = CaptureThread(lambda: FlakyCamera(world), config,
                            sleep=lambda s: delays.append(s) or time.sleep(s) or False).start()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 50 and time.monotonic() < deadline:
        frame = capture.slot.get(0.5)
        if frame is not None:
            got.append(frame)
    capture.stop()
    stats = capture.stats()
    assert len(got) == 50, "frames kept flowing across the failures"
    assert stats.read_failures >= 2 and stats.reconnects >= 2
    assert stats.open_failures == 2  # the two refused re-opens after the first failure
    # after the first read failure: 0.01, then the two refused opens back off 0.02, 0.04, then success resets it
    assert delays[:3] == [0.01, 0.02, 0.04]
    assert delays[3] == 0.01
    assert "flaky test camera" in stats.last_error


class HangingCamera:
    """Fake driver whose read blocks forever after 5 frames until closed (a hung USB camera)."""

    live = True
    description = "hanging test camera"

    def __init__(self, counter: list[int]) -> None:
        counter[0] += 1
        self.frames = 0
        self.closed = threading.Event()

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        if self.frames >= 5:
            self.closed.wait()
            raise SourceError("read on a closed camera")
        self.frames += 1
        return Frame(IMAGE, self.frames, time.monotonic(), self.description)

    def close(self) -> None:
        self.closed.set()


def test_stalled_camera_is_detected_and_reopened():
    opened = [0]
    config = SourceConfig(uri="demo", stall_timeout_s=0.2, reconnect_initial_s=0.01, reconnect_max_s=0.02)
    capture = CaptureThread(lambda: HangingCamera(opened), config).start()
    deadline = time.monotonic() + 10
    while opened[0] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    capture.stop()
    stats = capture.stats()
    assert opened[0] >= 3
    assert stats.stalls >= 2 and stats.reconnects >= 2
    assert stats.frames >= 10
    assert "no frame from hanging test camera" in stats.last_error


def test_finite_source_that_cannot_open_gives_up_and_closes_the_slot(tmp_path):
    from edge.capture import open_source

    config = SourceConfig(uri=str(tmp_path))  # empty folder
    capture = CaptureThread(lambda: open_source(config), config).start()
    assert capture.slot.get(5.0) is None
    capture._thread.join(5)
    assert not capture.running and capture.stats().open_failures == 1
    capture.stop()
