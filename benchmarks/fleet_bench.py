"""How long a fleet update takes, and how long the daemon pauses for it, on simulated devices.

Starts a loopback mosquitto, a loopback HTTP server and N simulated devices
(each a real `affect-sensor run` daemon on the demo camera plus a real
`affect-sensor update-agent`, as separate processes), then publishes one
signed desired document per device for a re-built copy of the built-in bundle
and reports, per device: publish -> activating (the `current` link switch),
publish -> active (after the health window), and the processing gap of the
hot swap (the longest pause between frames around it) against the camera's
frame interval. No engine build (onnxruntime backend).

    python benchmarks/fleet_bench.py [--devices 3] [--fps 30] [--window 5] [--json]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.bundle.default import DEFAULT_BUNDLE_DIR
from edge.bundle.store import read_bundle, rebuild_bundle
from edge.fleet.health import read_report
from edge.fleet.operator import desired_document, sign_bundle
from edge.fleet.signing import generate_key, load_signing_key

PREFIX = "fleet-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rebuilt_default(dest: Path, build: int) -> Path:
    """The built-in bundle under a new build number: same files, so timings reflect the shipped model."""
    version = read_bundle(DEFAULT_BUNDLE_DIR).manifest.version
    return rebuild_bundle(DEFAULT_BUNDLE_DIR, dest, build=build, version=f"{version}+b{build}").path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def finished(state: dict) -> bool:
    if state["state"] in ("failed", "rolled_back"):
        return True
    return state["state"] == "active" and (state["current"] or {}).get("build") == 2


def device_toml(root: Path, name: str, keys: Path, port: int, fps: float, window: float) -> Path:
    text = (f'[device]\nid = "{name}"\ngroup = "bench"\n[source]\nuri = "demo"\nfps = {fps}\n'
            f'[model]\nbackend = "onnxruntime"\nthreads = 1\n'
            f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\nprefix = "{PREFIX}"\n'
            f'[update]\nenabled = true\nbundles_dir = "{root / "bundles"}"\ntrusted_keys_dir = "{keys}"\n'
            f'allow_http = true\nhealth_file = "{root / "health.json"}"\nhealth_window_s = {window}\n')
    path = root / "sensor.toml"
    path.write_text(text)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--fps", type=float, default=30.0, help="demo camera frame rate")
    ap.add_argument("--window", type=float, default=5.0, help="health window, seconds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        print("fleet_bench: needs the mosquitto broker (apt-get install mosquitto)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    tar_bytes = None
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n" + ("user root\n" if os.geteuid() == 0
                                                                                 else ""))
        procs.append(subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL))
        key = load_signing_key(generate_key(work / "keys", "bench")[0])
        www = work / "www"
        www.mkdir()
        tar = www / "b2.tar"
        _, tar_bytes = sign_bundle(rebuilt_default(work / "b2", 2), key, tar)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(www)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/b2.tar"

        names = [f"sim-{i}" for i in range(args.devices)]
        roots = {n: work / n for n in names}
        for n in names:
            roots[n].mkdir()
            cfg = device_toml(roots[n], n, work / "keys", port, args.fps, args.window)
            for cmd in ("run", "update-agent"):
                procs.append(subprocess.Popen([sys.executable, "-m", "edge.cli.main", cmd, "--config", str(cfg)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        states: dict[str, list[tuple[float, dict]]] = {n: [] for n in names}
        lock = threading.Lock()

        def on_message(c, u, msg) -> None:
            if msg.payload:
                with lock:
                    states[msg.topic.split("/")[1]].append((time.time(), json.loads(msg.payload)))

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet-bench")
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/+/update/state", 1)
        client.on_message = on_message
        deadline = time.monotonic() + 30
        while True:
            try:
                client.connect("127.0.0.1", port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.loop_start()
        print(f"starting {args.devices} simulated devices (daemon + agent each) ...", file=sys.stderr)
        while not all(read_report(roots[n] / "health.json") and any(s["state"] == "idle" for _, s in states[n])
                      for n in names):
            if time.monotonic() > deadline + 60:
                raise TimeoutError("devices did not come up within 90 s")
            time.sleep(0.2)
        published: dict[str, float] = {}
        for n in names:
            doc = desired_document(tar, url, f"device:{n}", key)
            published[n] = time.time()
            client.publish(f"{PREFIX}/{n}/update/desired", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)
        end = time.monotonic() + 60 + args.window
        while time.monotonic() < end:
            with lock:
                done = all(any(finished(s) for _, s in states[n]) for n in names)
            if done:
                break
            time.sleep(0.1)
        rows = []
        for n in names:
            with lock:
                seen = list(states[n])

            def first(state: str, seen=seen, since=published[n]) -> float | None:
                return next((t for t, s in seen if s["state"] == state and t >= since), None)

            switched, active = first("activating"), first("active")
            health = read_report(roots[n] / "health.json")
            rows.append({
                "device": n, "final_state": seen[-1][1]["state"] if seen else "?",
                "publish_to_switch_s": None if switched is None else round(switched - published[n], 3),
                "publish_to_active_s": None if active is None else round(active - published[n], 3),
                "swap_gap_ms": None if health is None or health.last_swap_gap_ms is None
                else round(health.last_swap_gap_ms, 1),
                "frame_interval_ms": round(1000 / args.fps, 1),
            })
        client.loop_stop()
        server.shutdown()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    result = {"devices": args.devices, "fps": args.fps, "health_window_s": args.window,
              "bundle_bytes": tar_bytes, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"fleet update of the built-in bundle (re-built as build 2, {tar_bytes:,} byte tar) on {args.devices} "
          "simulated devices, "
          f"demo camera at {args.fps:g} fps, health window {args.window:g} s, onnxruntime (no engine build)")
    print(f"{'device':<8} {'state':<12} {'publish->switch s':>18} {'publish->active s':>18} {'swap gap ms':>12}")
    for r in rows:
        print(f"{r['device']:<8} {r['final_state']:<12} {r['publish_to_switch_s']!s:>18} "
              f"{r['publish_to_active_s']!s:>18} {r['swap_gap_ms']!s:>12}")
    gaps = [r["swap_gap_ms"] for r in rows if r["swap_gap_ms"] is not None]
    if gaps:
        print(f"median swap gap {statistics.median(gaps):.1f} ms vs frame interval {1000 / args.fps:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
