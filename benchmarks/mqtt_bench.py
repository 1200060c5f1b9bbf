"""Results publish rate and latency to a local mosquitto, with the daemon's real payloads.

    python benchmarks/mqtt_bench.py [--messages 5000] [--paced-hz 200] [--faces 2]

Two runs per QoS: a burst (throughput: messages offered as fast as the caller
can, nothing rate-limited) and a paced run at a fixed rate (latency without
queueing). Latency is end to end: `publish_result()` call to arrival at a
subscriber on the same host (same clock). Starts its own broker on a free
loopback port (tests/mqtt_broker.py); needs the `mosquitto` binary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mqtt_broker import Mosquitto

from edge.config.models import MQTTConfig
from edge.labels import DEFAULT_LABELS
from edge.publish import payloads as p
from edge.publish.client import MqttPublisher


def _record(frame_id: int, faces: int, rng: np.random.Generator) -> p.ResultRecord:
    out = []
    for t in range(faces):
        au = rng.random(len(DEFAULT_LABELS.aus))
        fe = rng.dirichlet(np.ones(len(DEFAULT_LABELS.expressions)))
        out.append(p.face_result(t, (100.0 * t, 50.0, 120.0, 140.0), 0.95, DEFAULT_LABELS, au, au > 0.5, fe))
    return p.result_record("bench", p.BundleRef(name="ssm-student", version="1.0.0", build=1), frame_id, out, 12.5)


def run(port: int, qos: int, n: int, paced_hz: float | None, faces: int) -> dict[str, float]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    arrived: dict[int, float] = {}
    done = threading.Event()
    ready = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{qos}-{paced_hz}", protocol=paho.MQTTv5)

    def on_message(c, u, msg) -> None:
        arrived[json.loads(msg.payload)["frame_id"]] = time.perf_counter()
        if len(arrived) >= n:
            done.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda c, u, mid, rc, props: ready.set()
    sub.on_connect = lambda c, u, f, rc, props: c.subscribe("affect/bench/results", qos=qos)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(10)
    cfg = MQTTConfig(enabled=True, port=port, qos_results=qos, results_max_hz=0, queue_max=n + 10,
                     buffer_max_messages=n + 10, max_inflight=100, discovery_prefix=None)
    pub = MqttPublisher(cfg, "bench", "bench")
    pub.start()
    pub.wait_connected(10)
    rng = np.random.default_rng(0)
    records = [_record(i, faces, rng) for i in range(n)]
    size = len(records[0].to_json())
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for i, rec in enumerate(records):
        if paced_hz:
            target = start + i / paced_hz
            while (now := time.perf_counter()) < target:
                time.sleep(min(0.001, target - now))
        sent[i] = time.perf_counter()
        pub.publish_result(rec)
    last = -1
    while not done.wait(3.0) and len(arrived) != last:  # give up once arrivals stall for 3 s
        last = len(arrived)
    end = max(arrived.values(), default=start)
    lat = np.array([(arrived[i] - sent[i]) * 1000 for i in arrived])
    pub.wait_idle(5)
    stats = pub.stats()
    pub.stop(drain_timeout=2)
    sub.disconnect()
    sub.loop_stop()
    return {"qos": qos, "mode": f"paced {paced_hz:g}/s" if paced_hz else "burst", "offered": n,
            "delivered": len(arrived), "rate": len(arrived) / max(end - start, 1e-9),
            "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p95": float(np.percentile(lat, 95)) if lat.size else float("nan"), "bytes": size,
            "dropped": stats.dropped_queue_full + stats.dropped_buffer_full + stats.dropped_offline,
            "acked": stats.acked if qos else "-"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--paced-hz", type=float, default=200.0)
    parser.add_argument("--faces", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp), extra_config=("max_queued_messages 0",)) as broker:
        for qos in (0, 1):
            rows.append(run(broker.plain_port, qos, args.messages, None, args.faces))
            rows.append(run(broker.plain_port, qos, min(args.messages, int(args.paced_hz * 10)), args.paced_hz,
                            args.faces))
    print(f"results payload: {rows[0]['bytes']} bytes ({args.faces} faces, "
          f"{len(DEFAULT_LABELS.aus)} AUs, {len(DEFAULT_LABELS.expressions)} expressions)")
    print("| QoS | mode | offered | broker acks (+1 status) | delivered | publisher drops | msg/s | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['qos']} | {r['mode']} | {r['offered']} | {r['acked']} | {r['delivered']} | {r['dropped']} | "
              f"{r['rate']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
