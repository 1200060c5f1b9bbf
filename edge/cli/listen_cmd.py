"""`affect-sensor listen`: a live table of devices and their latest results, read from the broker.

Credentials come from a config file's [mqtt] section or from --password-file /
--password-env (the same SecretRef mechanism); a password is never an argument.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edge.cli.mqtt_args import add_mqtt_args, mqtt_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listen", help="print a live table of devices and their latest results (MQTT subscriber)")
    add_mqtt_args(p)
    p.add_argument("--once", action="store_true", help="collect for --wait seconds, print one table, exit")
    p.add_argument("--wait", type=float, default=2.0, help="seconds to collect before --once prints (default 2)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between table refreshes (default 1)")
    p.add_argument("--json", action="store_true", help="print the device states as JSON instead of a table")
    p.set_defaults(func=_listen)


@dataclass
class DeviceView:
    """What the listener knows about one device; every field from the latest message of its kind."""

    state: str = "?"
    bundle: str = "-"
    faces: int | None = None
    top: str = "-"
    processed_fps: float | None = None
    last_result_ms: int | None = None
    frame_id: int | None = None
    errors: list[str] = field(default_factory=list)


def apply_message(devices: dict[str, DeviceView], prefix: str, topic: str, payload: bytes) -> None:
    """Fold one message into the device table; unparsable payloads are noted, not fatal."""
    from edge.publish.topics import device_of

    found = device_of(prefix, topic)
    if found is None:
        return
    device, kind = found
    view = devices.setdefault(device, DeviceView())
    if not payload:  # a cleared retained message
        return
    try:
        data: Any = json.loads(payload)
        if kind == "status":
            view.state = str(data["state"])
        elif kind == "info":
            bundle = data.get("bundle")
            view.bundle = f"{bundle['name']} {bundle['version']}" if bundle else "none"
        elif kind == "results":
            faces = data["faces"]
            view.faces = len(faces)
            view.frame_id = int(data["frame_id"])
            view.last_result_ms = int(data["ts_ms"])
            view.top = (f"{faces[0]['top_expression']} ({faces[0]['top_score']:.2f})" if faces else "-")
        elif kind == "stats":
            view.processed_fps = float(data["processed_fps"])
    except (ValueError, KeyError, TypeError) as exc:
        view.errors = [*view.errors[-2:], f"{kind}: unreadable payload ({type(exc).__name__}: {exc})"]


def render_table(devices: dict[str, DeviceView], now_ms: int) -> str:
    header = ("DEVICE", "STATE", "BUNDLE", "FACES", "TOP EXPRESSION", "FPS", "FRAME", "AGE")
    rows = [header]
    for name in sorted(devices):
        v = devices[name]
        age = "-" if v.last_result_ms is None else f"{max(0, now_ms - v.last_result_ms) / 1000:.1f}s"
        rows.append((name, v.state, v.bundle, "-" if v.faces is None else str(v.faces), v.top,
                     "-" if v.processed_fps is None else f"{v.processed_fps:.1f}",
                     "-" if v.frame_id is None else str(v.frame_id), age))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no devices seen)")
    for name in sorted(devices):
        lines += [f"! {name}: {e}" for e in devices[name].errors]
    return "\n".join(lines)


def _listen(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from edge.publish.client import PublisherError, build_client, connect_async
    from edge.publish.topics import all_devices

    config = mqtt_config(args, "listen")
    try:
        client = build_client(config, f"affect-listen-{socket.gethostname()[:32]}-{os.getpid()}")
    except PublisherError as exc:
        raise CLIError(str(exc)) from None
    devices: dict[str, DeviceView] = {}
    lock = threading.Lock()
    ready = threading.Event()
    problem: list[str] = []
    kinds = ("status", "info", "results", "stats")

    def on_connect(c, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            problem.append(f"broker refused the connection: {reason}")
            ready.set()
        else:
            c.subscribe([(all_devices(config.prefix, k), 0) for k in kinds])

    def on_subscribe(c, userdata, mid, reasons, properties) -> None:
        refused = [f"{all_devices(config.prefix, k)}: {r}" for k, r in zip(kinds, reasons, strict=False)
                   if r.is_failure]
        if refused:
            problem.append("subscription refused: " + "; ".join(refused))
        ready.set()

    def on_connect_fail(c, userdata) -> None:
        exc = sys.exc_info()[1]
        problem.append(f"cannot connect to {config.host}:{config.port}: {exc}")
        ready.set()

    def on_message(c, userdata, msg) -> None:
        with lock:
            apply_message(devices, config.prefix, msg.topic, bytes(msg.payload))

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_connect_fail, client.on_message = on_connect_fail, on_message
    connect_async(client, config)
    client.loop_start()
    try:
        if not ready.wait(10):
            raise CLIError(f"no answer from broker {config.host}:{config.port} within 10 s")
        if problem:
            raise CLIError(problem[0])
        start = time.monotonic()
        end = start + (args.wait if args.once else (args.duration if args.duration is not None else float("inf")))
        while True:
            now = time.monotonic()
            if args.once:
                time.sleep(max(0.0, end - now))
            else:
                time.sleep(max(0.0, min(args.interval, end - now)))
            with lock:
                text = (json.dumps({k: vars(v) for k, v in sorted(devices.items())}) if args.json
                        else render_table(devices, int(time.time() * 1000)))
            if not args.once and not args.json and sys.stdout.isatty():
                print("\x1b[2J\x1b[H", end="")
            print(text, flush=True)
            if time.monotonic() >= end:
                return 0
    finally:
        client.disconnect()
        client.loop_stop()
