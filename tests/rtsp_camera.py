"""A real RTSP camera on loopback for tests: GStreamer's RTSP server serving a clip of the demo face.

    from rtsp_camera import RtspCamera, make_clip, require_rtsp_server
    clip = make_clip(tmp_path / "clip")              # 4 s of the demo scene as JPEG frames, rendered with OpenCV
    with RtspCamera(clip, user="cam", password="pw") as camera:
        camera.url                                   # rtsp://cam:pw@127.0.0.1:PORT/cam
        camera.pause(); camera.resume()              # SIGSTOP / SIGCONT: hung with its connections open
        camera.kill(); camera.start()                # gone (connections reset), then back on the same port

The server (tests/rtsp_server_gst.py) runs under Debian's /usr/bin/python3, which has `gi`; tests skip
cleanly where python3-gi, the RTSP server typelib or the GStreamer plugins it uses are missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

import cv2
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server_gst.py")
APT = ("apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
       "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad")
_PROBE = """
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstRtsp", "1.0"); gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtsp, GstRtspServer
Gst.init(None)
missing = [e for e in ("appsrc", "jpegparse", "rtpjpegpay") if Gst.ElementFactory.find(e) is None]
print("missing:" + ",".join(missing) if missing else "ok")
"""
_available: str | None = None


def require_rtsp_server() -> None:
    """Skip the calling test unless GStreamer's RTSP server and its plugins are installed."""
    global _available
    if _available is None:
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            _available = f"{SYSTEM_PYTHON} not found"
        else:
            probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=60)
            out = probe.stdout.strip()
            _available = "" if out == "ok" else (out or probe.stderr.strip().splitlines()[-1:] or ["failed"])[0]
    if _available:
        pytest.skip(f"GStreamer's RTSP server is not usable ({_available}); {APT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_clip(folder: Path, seconds: float = 4.0, fps: int = 15, size: tuple[int, int] = (640, 480)) -> Path:
    """The demo scene (a real face drifting, neutral <-> smiling every 2 s) as numbered JPEG frames."""
    from edge.capture.demo import load_demo_photos, render_demo_frame

    folder.mkdir(parents=True, exist_ok=True)
    photos = load_demo_photos()
    for i in range(round(seconds * fps)):
        image = render_demo_frame(photos, i / fps, *size)
        assert cv2.imwrite(str(folder / f"{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return folder


class RtspCamera:
    """The server process, on a fixed free loopback port, stoppable, killable and restartable."""

    def __init__(self, frames: Path, fps: int = 15, path: str = "/cam", user: str | None = None,
                 password: str | None = None) -> None:
        require_rtsp_server()
        self.frames, self.fps, self.path, self.user, self.password = frames, fps, path, user, password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = frames.parent / f"rtsp-server-{self.port}.log"

    def url_for(self, path: str | None = None, user: str | None = None, password: str | None = None) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{path or self.path}"

    @property
    def url(self) -> str:
        return self.url_for()

    def start(self) -> RtspCamera:
        cmd = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--frames", str(self.frames),
               "--fps", str(self.fps), "--path", self.path]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        if self.user:
            cmd += ["--user", self.user]
            env["RTSP_TEST_PASSWORD"] = self.password or ""
        with self.log.open("a") as log:  # a file, not a pipe: a full pipe would block the server
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready PORT", or EOF if it failed
        if not line.startswith("ready"):
            self.kill()
            raise RuntimeError(f"RTSP server did not start: {line!r} {self.log.read_text()[-2000:]}")
        return self

    def pause(self) -> None:
        """Hang: the process stops, its sockets stay open (the kernel still accepts new TCP connections)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # works on a stopped process too
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> RtspCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
