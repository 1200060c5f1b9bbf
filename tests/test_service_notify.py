"""sd_notify and the progress watchdog against a real AF_UNIX datagram socket (what systemd listens on)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from edge.service.notify import Notifier, Watchdog, watchdog_timeout_s


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket.

    A receiver thread stamps each message on arrival, so the test can tell when
    pings happened relative to heartbeats and stalls.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(0.02)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def drain(self, for_s: float = 0.1) -> list[tuple[float, str]]:
        """Wait `for_s` and return everything received so far."""
        time.sleep(for_s)
        return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path: Path):
    address = str(tmp_path / "notify") if request.param == "path" else f"@affect-test-{uuid.uuid4().hex}"
    sock = NotifySocket(address)
    yield sock
    sock.close()


def test_messages_arrive_as_key_value_datagrams(notify_socket: NotifySocket) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.ready("camera argus:0 open,\nmodel v1.2") is True
    assert notifier.reloading()
    assert notifier.status("reloaded")
    assert notifier.extend_timeout(90)
    assert notifier.stopping()
    got = [text for _, text in notify_socket.drain()]
    assert got[0] == "READY=1\nSTATUS=camera argus:0 open, model v1.2"
    assert got[1].startswith("RELOADING=1\nMONOTONIC_USEC=") and int(got[1].split("=")[-1]) > 0
    assert got[2:] == ["STATUS=reloaded", "EXTEND_TIMEOUT_USEC=90000000", "STOPPING=1"]


def test_not_under_systemd_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    with Watchdog.from_env(notifier, {"WATCHDOG_USEC": "100000"}) as dog:
        assert not dog.active
        dog.heartbeat()


def test_bad_environment_and_fields_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET='relative/sock'"):
        Notifier.from_env({"NOTIFY_SOCKET": "relative/sock"})
    with pytest.raises(ValueError, match="WATCHDOG_USEC='soon'"):
        watchdog_timeout_s({"WATCHDOG_USEC": "soon"})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        Notifier(str(tmp_path / "x")).send("READY")
    # a socket nobody listens on: reported, never raised into the daemon
    assert Notifier(str(tmp_path / "nobody")).watchdog() is False


def test_watchdog_env_honours_pid_and_units() -> None:
    assert watchdog_timeout_s({}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, pid=4242) == 2.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, pid=1) is None


def test_watchdog_pings_only_while_heartbeats_come(notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000"}  # T = 0.4 s
    notifier = Notifier.from_env(env)
    dog = Watchdog.from_env(notifier, env)
    assert (dog.interval_s, dog.stall_limit_s) == (0.1, 0.2)
    notifier.ready()
    with dog:
        start = time.monotonic()
        while time.monotonic() - start < 0.6:  # healthy loop: a frame every 20 ms
            dog.heartbeat()
            time.sleep(0.02)
        stalled_at = time.monotonic()
        notify_socket.drain(0.8)  # loop stalls: no heartbeats for 0.8 s (> stall limit + interval)
        dog.heartbeat()  # and recovers
        recovered_at = time.monotonic()
        notify_socket.drain(0.35)
    notifier.stopping()
    messages = notify_socket.drain()
    texts = [text for _, text in messages]
    assert texts[0] == "READY=1"
    assert texts[-1] == "STOPPING=1"
    pings = [t for t, text in messages if text == "WATCHDOG=1"]
    healthy = [t for t in pings if t < stalled_at]
    assert len(healthy) >= 4, f"expected ~6 pings in 0.6 s of heartbeats, got {len(healthy)}"
    # Pings may continue until the last heartbeat is older than the stall limit (+ one interval of
    # jitter); after that, none until the loop recovers.
    silent_from = stalled_at + dog.stall_limit_s + dog.interval_s + 0.05
    assert not [t for t in pings if silent_from < t < recovered_at], "pinged while the loop was stalled"
    assert dog.skipped >= 3
    assert [t for t in pings if t > recovered_at], "pings did not resume after the loop recovered"
