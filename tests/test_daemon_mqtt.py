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
