"""Network cameras against a real RTSP server on loopback (GStreamer's, tests/rtsp_camera.py), serving a clip
of the demo face with Digest authentication, and the real daemon (`affect-sensor run` as a subprocess).

The camera hangs with its connections open (SIGSTOP), is killed, and comes back on the same port: the
daemon must survive all three, reconnect and keep producing results, and a clean stop must be quick. A
wrong path and refused credentials must be logged with the camera's RTSP status, and no log line may
hold a password. Everything listens on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rtsp_camera import RtspCamera, make_clip, require_rtsp_server

from edge.capture import SourceTimeout, open_source
from edge.capture.rtsp import digest_authorization, explain_rtsp_failure, parse_challenge
from edge.config.models import SourceConfig

USER = "cam"
PASSWORD = "Pw:with@odd/chars%"  # URL-quoted in the URL; must never reach a log line in either form
WRONG_PASSWORD = "Wrong-Pw-8812"
STALL_S = 2.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    require_rtsp_server()
    return make_clip(tmp_path_factory.mktemp("rtsp") / "clip")


def write_config(folder: Path, url: str) -> tuple[Path, Path]:
    out = folder / "results.jsonl"
    config = folder / "sensor.toml"
    config.write_text(f"""
[source]
uri = "{url}"
fps = 15.0
stall_timeout_s = {STALL_S}
reconnect_initial_s = 0.5
reconnect_max_s = 2.0

[detection]
detector = "whole_frame"

[model]
threads = 1

[sinks]
jsonl = "{out}"

[stats]
interval_s = 5.0
""")
    return config, out


class Daemon:
    """`affect-sensor run --config ...` as a subprocess; its log (stderr) goes to a file."""

    def __init__(self, folder: Path, url: str, *extra: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config, self.out = write_config(folder, url)
        self.log = folder / "daemon.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(self.config), *extra],
                                         stdout=subprocess.DEVNULL, stderr=log)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def faces(self) -> int:
        """Result records holding a face so far."""
        if not self.out.exists():
            return 0
        lines = self.out.read_text().splitlines()
        return sum(1 for line in lines if line.endswith("}") and json.loads(line)["faces"])

    def wait_for(self, what: str, predicate, timeout: float) -> float:
        """Seconds until `predicate()` holds; fails if the daemon exits or `timeout` passes first."""
        started = time.monotonic()
        while not predicate():
            rc = self.proc.poll()
            assert rc is None, f"the daemon exited (rc {rc}) waiting for {what}:\n{self.text()[-3000:]}"
            assert time.monotonic() - started < timeout, f"no {what} within {timeout} s:\n{self.text()[-3000:]}"
            time.sleep(0.05)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def assert_no_secret(*texts: str) -> None:
    from urllib.parse import quote

    for text in texts:
        for secret in (PASSWORD, quote(PASSWORD, safe=""), WRONG_PASSWORD):
            assert secret not in text


def test_daemon_survives_a_hung_a_killed_and_a_returning_camera(tmp_path, clip):
    with RtspCamera(clip, user=USER, password=PASSWORD) as camera:
        daemon = Daemon(tmp_path / "run", camera.url)
        try:
            startup = daemon.wait_for("results with a face", lambda: daemon.faces() >= 10, 90)

            # 1. hung with the connection open: the read times out on the capture thread itself
            before = daemon.faces()
            camera.pause()
            hang_noticed = daemon.wait_for("the stall", lambda: "(read timeout)" in daemon.text(), 4 * STALL_S)
            time.sleep(1.5)  # the reconnect (after 0.5 s) is now blocked in its open on the stopped server
            assert daemon.proc.poll() is None and daemon.faces() - before < 40

            # 2. killed: the blocked open fails at once, the camera's port refuses
            camera.kill()
            refused = daemon.wait_for("refused reconnects", lambda: "refused (camera off" in daemon.text(), 15)

            # 3. back on the same port: reconnect with the back-off, results again
            camera.start()
            with_faces = daemon.faces()
            resumed = daemon.wait_for("results after the camera came back",
                                      lambda: "reconnected to stream" in daemon.text()
                                      and daemon.faces() >= with_faces + 10, 30)

            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            rc = daemon.proc.wait(20)
            stop_s = time.monotonic() - started
        finally:
            daemon.kill()
    log = daemon.text()
    print(f"\nstartup to 10 faces {startup:.1f} s; hang noticed {hang_noticed:.2f} s (stall_timeout_s {STALL_S}); "
          f"after kill, refused logged in {refused:.2f} s; back to 10 more faces in {resumed:.1f} s; "
          f"SIGTERM to exit {stop_s:.2f} s")
    assert rc == 0, log[-3000:]
    assert stop_s < 3.0, f"clean stop took {stop_s:.1f} s"
    assert hang_noticed < STALL_S + 1.5
    assert f"no frame from stream rtsp://{USER}:***@127.0.0.1:{camera.port}/cam for" in log
    assert "abandoning" not in log  # FFmpeg's own timeouts did the job: no capture was ever given up on
    assert "Segmentation fault" not in log and "Traceback" not in log
    assert_no_secret(log, daemon.out.read_text())


def test_wrong_path_and_refused_credentials_are_logged_with_the_rtsp_status(tmp_path, clip):
    with RtspCamera(clip, user=USER, password=PASSWORD) as camera:
        wrong_path = Daemon(tmp_path / "path", camera.url_for(path="/nope"), "--duration", "4")
        wrong_password = Daemon(tmp_path / "password", camera.url_for(password=WRONG_PASSWORD), "--duration", "4")
        no_password = Daemon(tmp_path / "none", camera.url_for(user="", password=""), "--duration", "4")
        try:
            for daemon in (wrong_path, wrong_password, no_password):
                assert daemon.proc.wait(90) == 0, daemon.text()[-3000:]
        finally:
            for daemon in (wrong_path, wrong_password, no_password):
                daemon.kill()
    where = f"127.0.0.1:{camera.port}"
    path_log, password_log, none_log = wrong_path.text(), wrong_password.text(), no_password.text()
    assert (f"cannot open stream rtsp://{USER}:***@{where}/nope: RTSP 404 Not Found: the camera has no stream at "
            "path '/nope' (wrong path?); retrying in") in path_log
    assert (f"cannot open stream rtsp://{USER}:***@{where}/cam: RTSP 401 Unauthorized: the camera refused the "
            f"credentials of user '{USER}'; retrying in") in password_log
    assert (f"cannot open stream rtsp://{where}/cam: RTSP 401 Unauthorized: the camera requires a user name and "
            "password (none in the URL); retrying in") in none_log
    assert_no_secret(path_log, password_log, none_log)


def test_read_timeout_of_a_hung_stream_fires_on_the_reading_thread(clip):
    """OpenCVSource alone: FFmpeg's read timeout ends a read on a hung camera after stall_timeout_s."""
    with RtspCamera(clip) as camera:
        source = open_source(SourceConfig(uri=camera.url, stall_timeout_s=1.0))
        assert source.read_timeout_s == 1.0 and source.open_timeout_s is not None
        source.open()
        try:
            frames = [source.read() for _ in range(5)]
            assert all(f is not None and f.image.shape == (480, 640, 3) for f in frames)
            camera.pause()
            started = time.monotonic()
            with pytest.raises(SourceTimeout, match="read timeout"):
                for _ in range(100):  # frames already buffered come first
                    source.read()
            waited = time.monotonic() - started
        finally:
            source.close()
            camera.resume()
    assert 0.9 <= waited < 2.5


def test_diagnosis_of_a_silent_and_a_non_rtsp_peer():
    """Real sockets on loopback: one accepts and never answers (a hung camera), one answers in HTTP."""
    silent = socket.create_server(("127.0.0.1", 0))
    http = socket.create_server(("127.0.0.1", 0))

    def answer_http() -> None:
        conn, _ = http.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_http, daemon=True)
    thread.start()
    try:
        silent_port, http_port = silent.getsockname()[1], http.getsockname()[1]
        started = time.monotonic()
        text = explain_rtsp_failure(f"rtsp://u:secret@127.0.0.1:{silent_port}/x", timeout=0.5)
        assert time.monotonic() - started < 1.5
        assert text == f"no RTSP answer from 127.0.0.1:{silent_port} within 0.5 s (camera hung or unreachable)"
        text = explain_rtsp_failure(f"rtsp://127.0.0.1:{http_port}/x", timeout=2.0)
        assert text.startswith(f"127.0.0.1:{http_port} does not speak RTSP (not an RTSP answer")
    finally:
        silent.close()
        http.close()
        thread.join(2)
    assert explain_rtsp_failure("rtsp://u:secret@127.0.0.1:1/x") == \
        "connection to 127.0.0.1:1 refused (camera off, or wrong port?)"


def test_digest_answer_matches_rfc_2617():
    """RFC 2617 section 3.5's worked example."""
    scheme, params = parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                     'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                                     'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert scheme == "digest" and params["realm"] == "testrealm@host.com"
    header = digest_authorization(params, "Mufasa", "Circle Of Life", "GET", "/dir/index.html",
                                  cnonce="0a4f113b", nc=1)
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert 'qop=auth' in header and 'nc=00000001' in header and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in header


def test_rtsp_server_helper_skips_cleanly_without_gstreamer(monkeypatch):
    import rtsp_camera

    monkeypatch.setattr(rtsp_camera, "SYSTEM_PYTHON", "/nonexistent/python3")
    monkeypatch.setattr(rtsp_camera, "_available", None)
    with pytest.raises(pytest.skip.Exception, match="GStreamer's RTSP server is not usable"):
        rtsp_camera.require_rtsp_server()
    assert os.access(sys.executable, os.X_OK)
