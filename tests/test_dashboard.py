"""The shipped Grafana dashboard reads only topics and fields the daemon really publishes.

A real daemon (built-in bundle, demo source) publishes to a real mosquitto;
each panel's topic, the fields Grafana's MQTT data source makes of those
payloads (top-level keys; nested objects and arrays arrive as JSON fields,
grafana/mqtt-datasource pkg/mqtt/framer.go), the paths its Extract-fields
transformations take (lodash `get`, as Grafana evaluates them), and every
field name its options name, are checked against the messages received.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mqtt_broker import Collector, Mosquitto

from edge.pipeline.daemon import Daemon, RunLimits

pytestmark = pytest.mark.timeout(180)

DASHBOARD = Path(__file__).resolve().parents[1] / "firmware_cfg" / "dashboards" / "grafana-affect-sensor.json"
PLUGIN = "grafana-mqtt-datasource"
PANEL_TYPES = {"stat", "timeseries", "table"}
DEVICE = "cam-dash"
_MISSING = object()


def lodash_get(value, path: str):
    """`_.get(value, path)` for the paths dashboards use: `a.b`, `[0].c`, `a[1].b`."""
    for token in re.findall(r"[^.[\]]+", path):
        if isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        elif isinstance(value, dict) and token in value:
            value = value[token]
        else:
            return _MISSING
    return value


def stat_field_names(pattern: str) -> list[str]:
    """The names in a stat panel's field regex, which the dashboard writes as /^(a|b)$/ or /^a$/."""
    match = re.fullmatch(r"/\^\(?([^()$^/]+)\)?\$/", pattern)
    assert match, f"reduceOptions.fields {pattern!r} is not of the form /^(a|b)$/ this test understands"
    return match.group(1).split("|")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, list[dict]]:
    """topic -> JSON payloads the daemon published in a few seconds of the demo source."""
    tmp = tmp_path_factory.mktemp("dashboard")
    with Mosquitto(tmp / "broker") as broker, Collector(broker.plain_port, ["affect/#"]) as col:
        daemon = Daemon(None, [
            "mqtt.enabled=true", f"mqtt.port={broker.plain_port}", f'device.id="{DEVICE}"',
            "mqtt.results_max_hz=50", "stats.interval_s=0.5", "source.loop=true",
        ], limits=RunLimits(duration_s=5))
        assert daemon.run() == 0
        base = f"affect/{DEVICE}"
        assert col.wait_for(lambda _: col.on(f"{base}/stats") and col.on(f"{base}/events"), timeout=10)
        out: dict[str, list[dict]] = {}
        for m in list(col.messages):
            out.setdefault(m.topic, []).append(json.loads(m.payload))
    assert any(r["faces"] for r in out[f"{base}/results"]), "the demo source should show a face"
    return out


def fields_of(payloads: list[dict]) -> dict[str, list]:
    """Grafana's fields for these messages: its receive-time `Time`, and top-level keys present in every payload."""
    keys = set.intersection(*(set(p) for p in payloads))
    return {"Time": [p["ts_ms"] for p in payloads]} | {k: [p[k] for p in payloads] for k in keys}


def apply_transformations(panel: dict, fields: dict[str, list]) -> dict[str, list]:
    for transform in panel.get("transformations", []):
        opts = transform["options"]
        where = f"panel {panel['title']!r} {transform['id']}"
        if transform["id"] == "extractFields":
            assert opts["format"] == "json" and opts["jsonPaths"], where
            source = opts["source"]
            assert source in fields, f"{where}: source field {source!r} not in payloads ({sorted(fields)})"
            extracted = {}
            for jp in opts["jsonPaths"]:
                values = [lodash_get(v, jp["path"]) for v in fields[source]]
                found = [v for v in values if v is not _MISSING and v is not None]
                assert found, f"{where}: path {jp['path']!r} resolves in none of the {source!r} values"
                extracted[jp.get("alias") or jp["path"]] = found
            if opts["replace"]:
                fields = ({"Time": fields["Time"]} if opts.get("keepTime") else {}) | extracted
            else:
                fields = fields | extracted
        elif transform["id"] == "filterFieldsByName":
            names = opts["include"]["names"]
            missing = [n for n in names if n not in fields]
            assert not missing, f"{where}: fields {missing} not in payloads ({sorted(fields)})"
            fields = {n: fields[n] for n in names}
        else:
            pytest.fail(f"{where}: transformation unknown to this test; teach it how the fields change")
    return fields


def test_dashboard_is_an_importable_grafana_dashboard_for_the_mqtt_plugin():
    dash = json.loads(DASHBOARD.read_text())
    (ds_input,) = dash["__inputs"]
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == PLUGIN
    assert {v["name"] for v in dash["templating"]["list"]} == {"prefix", "device"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    for panel in dash["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["datasource"] == {"type": PLUGIN, "uid": "${" + ds_input["name"] + "}"}, panel["title"]
        assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])


def test_every_topic_and_field_the_dashboard_reads_is_published_by_the_daemon(published):
    dash = json.loads(DASHBOARD.read_text())
    topics_read = set()
    for panel in dash["panels"]:
        title = panel["title"]
        (target,) = panel["targets"]
        topic = target["topic"].replace("${prefix}", "affect").replace("${device}", DEVICE)
        assert "$" not in topic, f"panel {title!r}: unknown variable in {target['topic']!r}"
        assert published.get(topic), f"panel {title!r}: nothing was published on {topic}"
        topics_read.add(topic)
        fields = apply_transformations(panel, fields_of(published[topic]))

        named = [o["matcher"]["options"] for o in panel["fieldConfig"].get("overrides", [])
                 if o["matcher"]["id"] == "byName"]
        if "reduceOptions" in panel["options"]:
            named += stat_field_names(panel["options"]["reduceOptions"]["fields"])
        missing = [n for n in named if n not in fields]
        assert not missing, f"panel {title!r} names fields {missing} that its data lacks ({sorted(fields)})"
        for name in named:
            assert any(v is not None for v in fields[name]), f"panel {title!r}: {name!r} is always null"
        if panel["type"] == "timeseries":
            for name, values in fields.items():
                if name == "Time":
                    continue
                numbers = [v for v in values if v is not None]
                assert numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers), \
                    f"panel {title!r}: {name!r} is not numeric in real payloads: {numbers[:3]}"
    # The dashboard covers the device's live topics (update topics belong to the fleet tools).
    assert {t.rsplit("/", 1)[1] for t in topics_read} == {"status", "info", "results", "events", "stats"}
