"""The daemon publishing to a real mosquitto broker: info, results, events, stats, all schema-valid."""

import json

import jsonschema
import pytest
from mqtt_broker import Collector, Mosquitto

from edge.pipeline.daemon import Daemon, RunLimits
from edge.publish import schemas

pytestmark = pytest.mark.timeout(180)


def test_daemon_publishes_schema_valid_payloads(tmp_path, tiny_bundle):
    with Mosquitto(tmp_path / "broker") as broker, Collector(broker.plain_port, ["affect/#"]) as col:
        daemon = Daemon(None, [
            f'model.bundle="{tiny_bundle}"', "mqtt.enabled=true", f"mqtt.port={broker.plain_port}",
            'device.id="cam-daemon"', "mqtt.results_max_hz=50", "stats.interval_s=0.5", "source.loop=true",
            "mqtt.discovery_prefix=\"homeassistant\"",
        ], limits=RunLimits(duration_s=4))
        assert daemon.run() == 0
        base = "affect/cam-daemon"
        assert col.wait_for(lambda _: col.on(f"{base}/stats") and col.on(f"{base}/results"), timeout=10)
        for kind in ("results", "stats", "info", "status", "events"):
            messages = col.on(f"{base}/{kind}")
            assert messages, f"nothing on {base}/{kind}"
            schema = schemas.load(kind)
            for m in messages:
                jsonschema.validators.validator_for(schema)(schema).validate(json.loads(m.payload))
        info = json.loads(col.on(f"{base}/info")[-1].payload)
        assert info["bundle"]["name"] == "unit-test" and info["bundle"]["build"] == 1
        stats = json.loads(col.on(f"{base}/stats")[-1].payload)
        assert stats["processed_fps"] > 0 and "frame" in stats["latency_ms"] and stats["rss_mb"] > 0
        results = [json.loads(m.payload) for m in col.on(f"{base}/results")]
        assert any(r["faces"] for r in results)
        assert col.wait_for(lambda _: json.loads(col.on(f"{base}/status")[-1].payload)["state"] == "offline",
                            timeout=10)


def test_a_hot_swap_keeps_the_tracked_face_and_sends_no_spurious_end_or_start(tmp_path, tiny_bundle, london_dir):
    """Issue 18: a swap replaces only the model runtime; the person in view keeps their track id, so the
    subscriber sees one `start` for them and no `end` across the swap (the old daemon restarted ids at 1)."""
    import threading
    import time

    import cv2
    import numpy as np
    from bundle_factory import make_tiny_bundle

    newer = make_tiny_bundle(tmp_path / "newer", build=2, version="0.0.2", seed=1)
    face = cv2.resize(cv2.imread(str(london_dir / "004_03.jpg")), (320, 320))
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[80:400, 160:480] = face
    video = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (640, 480))
    for _ in range(15):
        writer.write(frame)
    writer.release()
    config = tmp_path / "sensor.toml"
    base = (f'[device]\nid = "cam-swap"\n[source]\nuri = "{video}"\nloop = true\nfps = 15\n'
            f'[mqtt]\nenabled = true\nresults_max_hz = 0\n[model]\nthreads = 1\n')
    with Mosquitto(tmp_path / "broker") as broker, \
            Collector(broker.plain_port, ["affect/cam-swap/results", "affect/cam-swap/events"]) as col:
        port = f"port = {broker.plain_port}\n"
        config.write_text(base.replace("results_max_hz = 0\n", "results_max_hz = 0\n" + port)
                          + f'bundle = "{tiny_bundle}"\n')
        daemon = Daemon(config, limits=RunLimits(duration_s=90))

        def swap_then_stop() -> None:
            deadline = time.monotonic() + 60
            while daemon.state.faces_inferred < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            config.write_text(base.replace("results_max_hz = 0\n", "results_max_hz = 0\n" + port)
                              + f'bundle = "{newer}"\n')
            daemon.state.reload.set()
            while daemon.state.swaps == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            target = daemon.state.faces_inferred + 10
            while daemon.state.faces_inferred < target and time.monotonic() < deadline:
                time.sleep(0.05)
            daemon.state.stop.set()

        threading.Thread(target=swap_then_stop, daemon=True).start()
        assert daemon.run() == 0
        assert daemon.state.swaps == 1
        last = daemon.state.frames - 1
        assert col.wait_for(lambda _: any(json.loads(m.payload)["frame_id"] == last
                                          for m in col.on("affect/cam-swap/results")), timeout=15)
        results = [json.loads(m.payload) for m in col.on("affect/cam-swap/results")]
        events = [json.loads(m.payload) for m in col.on("affect/cam-swap/events")]
    builds = [r["bundle"]["build"] for r in results if r["faces"]]
    assert builds[0] == 1 and builds[-1] == 2 and builds.count(2) >= 5  # faces on both sides of the swap
    ids = {f["track_id"] for r in results for f in r["faces"]}
    assert len(ids) == 1, ids
    (tid,) = ids
    kinds = [e["kind"] for e in events if e["track_id"] == tid]
    assert kinds.count("start") == 1 and "end" not in kinds, kinds
