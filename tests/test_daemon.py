"""The capture daemon end to end: real detector, real bundle files, real photos, JSON-lines sink, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge.pipeline.daemon import Daemon, RunLimits

LONDON_PEOPLE = ("001", "004", "010")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def face_frames(london: Path, person: str, n: int, size=(640, 480)) -> list[np.ndarray]:
    """A person's neutral photo, scaled into a 640x480 frame and drifting sideways."""
    photo = cv2.imread(str(london / f"{person}_03.jpg"))
    face = cv2.resize(photo, (320, 320))
    frames = []
    for i in range(n):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        x = 60 + 4 * i
        frame[80:400, x : x + 320] = face
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 15.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def check_probabilities(face: dict) -> None:
    assert abs(sum(face["expressions"].values()) - 1) < 1e-3
    assert all(0 <= p <= 1 for p in face["aus"].values())
    assert face["top_expression"] == max(face["expressions"], key=face["expressions"].get)


def test_video_end_to_end_with_stable_track(tmp_path, tiny_bundle, london_dir):
    video = write_video(tmp_path / "person.avi", face_frames(london_dir, "004", 30))
    out = tmp_path / "out.jsonl"
    daemon = Daemon(None, [f'model.bundle="{tiny_bundle}"', f'source.uri="{video}"', f'sinks.jsonl="{out}"',
                           "detection.every_k_frames=3", "model.threads=1"])
    assert daemon.run() == 0
    recs = records(out)
    assert len(recs) == 30
    assert [r["frame_id"] for r in recs] == list(range(30))
    with_face = [r for r in recs if r["faces"]]
    assert len(with_face) >= 28
    assert {f["track_id"] for r in with_face for f in r["faces"]} == {with_face[0]["faces"][0]["track_id"]}
    for r in with_face:
        assert len(r["faces"]) == 1
        check_probabilities(r["faces"][0])
        assert r["bundle"] == {"name": "unit-test", "version": "0.0.1", "build": 1}
    xs = [r["faces"][0]["box"]["x"] for r in with_face]
    assert xs[-1] - xs[0] > 60  # the box followed the drifting face


def test_real_photos_folder_with_a_corrupt_file(tmp_path, tiny_bundle, london_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for person in LONDON_PEOPLE:
        shutil.copy(london_dir / f"{person}_03.jpg", folder / f"{person}_a_neutral.jpg")
        shutil.copy(london_dir / f"{person}_08.jpg", folder / f"{person}_b_smiling.jpg")
    (folder / "002_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    out = tmp_path / "out.jsonl"
    daemon = Daemon(None, [f'model.bundle="{tiny_bundle}"', f'source.uri="{folder}"', f'sinks.jsonl="{out}"',
                           "detection.every_k_frames=1"])
    assert daemon.run() == 0
    recs = records(out)
    assert len(recs) == 2 * len(LONDON_PEOPLE)  # the corrupt file was skipped, the run went on
    for r in recs:
        assert len(r["faces"]) == 1
        check_probabilities(r["faces"][0])


def run_cli(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_missing_bundle_is_a_clear_startup_error(tmp_path):
    result = run_cli(["run", "--set", f'model.bundle="{tmp_path}/nope"', "--max-frames", "1"])
    assert result.returncode == 2
    assert "nope" in result.stderr and "not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_tampered_bundle_is_refused_at_start(tmp_path, tiny_bundle):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    head = copy / "head.npz"
    data = bytearray(head.read_bytes())
    data[-10] ^= 0xFF
    head.write_bytes(bytes(data))
    result = run_cli(["run", "--set", f'model.bundle="{copy}"', "--max-frames", "1"])
    assert result.returncode == 2
    assert "head.npz" in result.stderr and "sha256" in result.stderr


def test_sigterm_mid_run_flushes_and_exits_zero(tmp_path, tiny_bundle):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--set", f'model.bundle="{tiny_bundle}"',
         "--set", f'sinks.jsonl="{out}"', "--set", "source.loop=true", "--duration", "60"],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stopped = [line for line in err.splitlines() if "stopped after" in line]
    assert stopped, err
    frames = int(stopped[0].split("stopped after ")[1].split()[0])
    lines = out.read_text().splitlines()
    assert len(lines) == frames >= 10
    json.loads(lines[-1])  # the last line is whole


def test_systemd_notify_ready_watchdog_stopping(tmp_path, tiny_bundle):
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.5)
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--set", f'model.bundle="{tiny_bundle}"', "--set", "source.loop=true",
         "--duration", "60"], env={**os.environ, **env}, stderr=subprocess.DEVNULL,
    )
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for m in messages) < 3:
            try:
                messages.append(server.recv(4096).decode())
            except TimeoutError:
                continue
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        while True:
            try:
                messages.append(server.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 0
    assert messages[0].startswith("EXTEND_TIMEOUT_USEC=")  # room for a first TensorRT engine build
    assert messages[1].startswith("READY=1")
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3
    assert messages[-1].startswith("STOPPING=1")


def test_sighup_hot_swaps_the_bundle_between_frames(tmp_path, tiny_bundle):
    from bundle_factory import make_tiny_bundle

    newer = make_tiny_bundle(tmp_path / "newer", build=2, version="0.0.2", seed=1)
    config = tmp_path / "sensor.toml"
    out = tmp_path / "out.jsonl"
    base = f'[source]\nloop = true\n[sinks]\njsonl = "{out}"\n[model]\nthreads = 1\n'
    config.write_text(base + f'bundle = "{tiny_bundle}"\n')
    daemon = Daemon(config, limits=RunLimits(duration_s=60))

    import threading

    def swap_when_running() -> None:
        while not out.exists() or len(out.read_text().splitlines()) < 5:
            time.sleep(0.05)
        config.write_text(base + f'bundle = "{newer}"\n')
        daemon.state.reload.set()
        deadline = time.monotonic() + 30
        while daemon.state.swaps == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        daemon.state.stop.set()

    threading.Thread(target=swap_when_running, daemon=True).start()
    assert daemon.run() == 0
    builds = [r["bundle"]["build"] for r in records(out)]
    assert builds[0] == 1 and builds[-1] == 2
    assert builds == sorted(builds)  # no interleaving after the swap
    assert daemon.state.swaps == 1 and daemon.state.last_swap_gap_ms is not None
