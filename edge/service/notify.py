"""systemd readiness and watchdog notifications (sd_notify protocol).

The protocol is one datagram of `KEY=VALUE` lines to the AF_UNIX socket named in
$NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). It is
a few lines, so it is written here instead of depending on the `sdnotify`
package, which is unmaintained and knows nothing of the watchdog variables.
Outside systemd (no $NOTIFY_SOCKET) every call is a no-op, so the daemon runs
the same way in a terminal, a container or a test.

The watchdog must prove that frames are being *processed*, not merely that a
thread is alive: `Watchdog` pings only while the processing loop keeps calling
`heartbeat()`. When the loop stalls for longer than the stall limit the pings
stop, and systemd kills and restarts the service after `WatchdogSec=`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Never block the processing loop on a slow or dead notification socket.
_SEND_TIMEOUT_S = 1.0


def _socket_address(value: str) -> str | bytes:
    """`@name` is an abstract socket: the kernel expects a leading NUL byte instead of '@'."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


@dataclass(frozen=True)
class Notifier:
    """Sends sd_notify messages; `address=None` (not under systemd) makes every call a no-op."""

    address: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        value = env.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        if not (value.startswith("/") or value.startswith("@")):
            raise ValueError(f"NOTIFY_SOCKET={value!r}: expected an absolute path or an abstract '@name'")
        return cls(value)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields as one datagram.

        False when not under systemd or when the socket refused the message:
        like libsystemd's sd_notify, a notification failure never stops the daemon.
        """
        for field in fields:
            if "=" not in field or "\n" in field:
                raise ValueError(f"sd_notify field {field!r}: expected one KEY=VALUE line")
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto("\n".join(fields).encode(), _socket_address(self.address))
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """Before re-reading config on SIGHUP; send `ready()` when done. MONOTONIC_USEC is what systemd >= 253 wants."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start/stop time, e.g. while a TensorRT engine is being built on first start."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_timeout_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """`WatchdogSec=` as seen by this process, or None when systemd expects no pings from it."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and int(owner) != (os.getpid() if pid is None else pid):
        return None  # meant for another process (we were started by the watched one)
    try:
        value = int(usec)
    except ValueError:
        raise ValueError(f"WATCHDOG_USEC={usec!r}: expected an integer number of microseconds") from None
    if value <= 0:
        raise ValueError(f"WATCHDOG_USEC={usec!r}: must be positive")
    return value / 1_000_000


class Watchdog:
    """Pings systemd's watchdog from a background thread while the processing loop makes progress.

    The loop calls `heartbeat()` once per processed frame (and per camera
    reconnect attempt: waiting for a camera is progress, a hung inference call
    is not). Every `interval_s` the thread pings if the last heartbeat is
    younger than `stall_limit_s`. Defaults from `WatchdogSec=` T: ping every
    T/4, stall limit T/2, so a healthy loop never misses a deadline and a
    stalled one is killed between T/2 and 1.75·T after its last frame.
    With no watchdog configured (or no $NOTIFY_SOCKET) it does nothing.
    """

    def __init__(
        self,
        notifier: Notifier,
        timeout_s: float | None,
        *,
        stall_limit_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self.timeout_s = timeout_s
        self.interval_s = timeout_s / 4 if timeout_s else None
        self.stall_limit_s = stall_limit_s if stall_limit_s is not None else (timeout_s / 2 if timeout_s else None)
        if self.stall_limit_s is not None and self.stall_limit_s <= 0:
            raise ValueError(f"watchdog stall limit must be positive, got {self.stall_limit_s}")
        self._clock = clock
        self._last_beat = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.skipped = 0

    @classmethod
    def from_env(cls, notifier: Notifier, env: Mapping[str, str] | None = None, **kwargs: float) -> Watchdog:
        return cls(notifier, watchdog_timeout_s(env), **kwargs)

    @property
    def active(self) -> bool:
        return self.timeout_s is not None and self._notifier.enabled

    def heartbeat(self) -> None:
        """The loop made progress. Cheap: one float store, no system call."""
        self._last_beat = self._clock()

    def stalled_for(self) -> float:
        return self._clock() - self._last_beat

    def start(self) -> Watchdog:
        if self.active and self._thread is None:
            self._last_beat = self._clock()
            self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self.interval_s is not None and self.stall_limit_s is not None
        while not self._stop.wait(self.interval_s):
            if self.stalled_for() <= self.stall_limit_s:
                self.pings += int(self._notifier.watchdog())
            else:
                self.skipped += 1
