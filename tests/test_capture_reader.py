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

from edge.capture import Backoff, CaptureThread, Frame, LatestFrameSlot, SourceError, SourceTimeout
from edge.capture.reader import MAX_HUNG
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


class TimingOutCamera:
    """Fake driver with a read timeout (what FFmpeg does with CAP_PROP_READ_TIMEOUT_MSEC): after 5 frames a
    read waits `read_timeout_s`, then fails with SourceTimeout. Records which thread reads and closes it."""

    live = True
    description = "timing-out test camera"

    def __init__(self, opened: list, read_timeout_s: float) -> None:
        opened.append(self)
        self.read_timeout_s = read_timeout_s
        self.frames = 0
        self.threads: dict[str, set[int]] = {"read": set(), "close": set()}

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        self.threads["read"].add(threading.get_ident())
        if self.frames >= 5:
            time.sleep(self.read_timeout_s)
            raise SourceTimeout(f"no frame from {self.description} for {self.read_timeout_s:.1f} s (read timeout)")
        self.frames += 1
        return Frame(IMAGE, self.frames, time.monotonic(), self.description)

    def close(self) -> None:
        self.threads["close"].add(threading.get_ident())


def test_camera_that_times_out_is_reopened_and_closed_only_by_its_reader():
    opened: list[TimingOutCamera] = []
    config = SourceConfig(uri="demo", stall_timeout_s=0.2, reconnect_initial_s=0.01, reconnect_max_s=0.02)
    capture = CaptureThread(lambda: TimingOutCamera(opened, 0.2), config).start()
    deadline = time.monotonic() + 10
    while len(opened) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    capture.stop()
    stats = capture.stats()
    assert len(opened) >= 3
    assert stats.stalls >= 2 and stats.reconnects >= 2 and stats.hung == 0
    assert stats.frames >= 10
    assert "no frame from timing-out test camera" in stats.last_error
    for camera in opened:  # never released from another thread than the one reading it
        assert camera.threads["close"] and camera.threads["close"] == camera.threads["read"]


class StuckCamera:
    """Fake driver that ignores its timeout: the first camera's read blocks after 3 frames until the test
    lets it return (a driver that comes back much later); later cameras work."""

    live = True
    description = "stuck test camera"

    def __init__(self, world: dict) -> None:
        world["cameras"].append(self)
        self.world = world
        self.stuck = len(world["cameras"]) <= world["stuck_cameras"]
        self.read_timeout_s = 0.1  # declared, and ignored below
        self.frames = 0
        self.threads: dict[str, set[int]] = {"read": set(), "close": set()}
        self.closed_after_return = False

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        self.threads["read"].add(threading.get_ident())
        time.sleep(0.005)
        if self.stuck and self.frames >= 3:
            self.world["release"].wait()
            self.frames += 1
            return Frame(IMAGE, -1, time.monotonic(), "late frame")  # must never reach the slot
        self.frames += 1
        return Frame(IMAGE, self.frames, time.monotonic(), self.description)

    def close(self) -> None:
        self.threads["close"].add(threading.get_ident())
        self.closed_after_return = self.world["release"].is_set()


def test_read_that_ignores_its_timeout_is_abandoned_not_released_and_capture_goes_on():
    world = {"cameras": [], "stuck_cameras": 1, "release": threading.Event()}
    config = SourceConfig(uri="demo", stall_timeout_s=0.2, reconnect_initial_s=0.05, reconnect_max_s=0.1)
    capture = CaptureThread(lambda: StuckCamera(world), config).start()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:
        frame = capture.slot.get(0.2)
        if frame is not None:
            got.append(frame)
    stuck = world["cameras"][0]
    assert len(got) == 20, "frames kept coming from a fresh worker"
    assert not stuck.threads["close"], "the hung capture was never released under its blocked read"
    stats = capture.stats()
    assert stats.hung == 1 and stats.reconnects >= 1 and stats.connected
    assert "read of stuck test camera blocked" in stats.last_error
    world["release"].set()  # the driver finally returns: its own thread releases it, the late frame is dropped
    deadline = time.monotonic() + 5
    while not stuck.threads["close"] and time.monotonic() < deadline:
        time.sleep(0.02)
    t = time.monotonic()
    capture.stop()
    assert time.monotonic() - t < 1.0
    assert stuck.threads["close"] == stuck.threads["read"] and stuck.closed_after_return
    assert all(f.source != "late frame" for f in got)
    while (frame := capture.slot.get(0)) is not None:
        assert frame.source != "late frame"
    for camera in world["cameras"]:
        assert camera.threads["close"] == camera.threads["read"]


def test_hung_workers_are_capped():
    world = {"cameras": [], "stuck_cameras": 99, "release": threading.Event()}
    config = SourceConfig(uri="demo", stall_timeout_s=0.1, reconnect_initial_s=0.01, reconnect_max_s=0.02)
    capture = CaptureThread(lambda: StuckCamera(world), config).start()
    time.sleep(2.0)
    stats = capture.stats()
    assert stats.hung == MAX_HUNG and len(world["cameras"]) == MAX_HUNG + 1 and not stats.connected
    assert not any(camera.threads["close"] for camera in world["cameras"])
    world["release"].set()
    capture.stop()
    deadline = time.monotonic() + 5
    while not all(camera.threads["close"] for camera in world["cameras"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    for camera in world["cameras"]:
        assert camera.threads["close"] == camera.threads["read"]


def test_stop_of_a_flowing_camera_takes_about_one_frame():
    opened: list[TimingOutCamera] = []
    config = SourceConfig(uri="demo", stall_timeout_s=5.0)

    class Paced(TimingOutCamera):
        def read(self) -> Frame | None:
            time.sleep(1 / 30)
            self.frames = 0  # never runs out
            return super().read()

    capture = CaptureThread(lambda: Paced(opened, 5.0), config).start()
    assert capture.slot.get(5.0) is not None
    t = time.monotonic()
    capture.stop()
    assert time.monotonic() - t < 0.5
    assert not capture.running and capture.slot.closed
    assert opened[0].threads["close"] == opened[0].threads["read"]


def test_finite_source_that_cannot_open_gives_up_and_closes_the_slot(tmp_path):
    from edge.capture import open_source

    config = SourceConfig(uri=str(tmp_path))  # empty folder
    capture = CaptureThread(lambda: open_source(config), config).start()
    assert capture.slot.get(5.0) is None
    assert capture.join(5)
    assert not capture.running and capture.stats().open_failures == 1
    capture.stop()
