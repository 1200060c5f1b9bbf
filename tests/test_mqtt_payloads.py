"""MQTT payload builders, shipped JSON Schemas, topic layout, expression events, HA discovery (no broker)."""

from __future__ import annotations

import json
import math
from datetime import datetime

import jsonschema
import numpy as np
import pytest
from pydantic import ValidationError

from edge.labels import DEFAULT_LABELS
from edge.publish import payloads as p
from edge.publish import schemas
from edge.publish.discovery import discovery_messages
from edge.publish.topics import Topics, all_devices, device_of

BUNDLE = p.BundleRef(name="ssm-student", version="1.2.0", build=7)


def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = schemas.load(kind)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


AU = np.linspace(0.05, 0.95, len(DEFAULT_LABELS.aus))


def _face(track_id: int = 1, happy: float = 0.7) -> p.FaceResult:
    au = AU
    fe = np.full(len(DEFAULT_LABELS.expressions), (1 - happy) / (len(DEFAULT_LABELS.expressions) - 1))
    fe[DEFAULT_LABELS.expressions.index("happiness")] = happy
    return p.face_result(track_id, (10.5, 20, 64, 72), 0.93, DEFAULT_LABELS, au, au >= 0.5, fe)


def _examples() -> dict[str, p.Payload]:
    record = p.result_record("cam-01", BUNDLE, 42, [_face(1), _face(2, 0.2)], 18.25)
    mqtt = p.MqttStats(connected=True, published=10, acked=9, buffered=1, buffered_bytes=700, dropped_buffer_full=0,
                       dropped_queue_full=0, dropped_offline=2, rate_limited=5, rejected=0, connects=1)
    return {
        "status": p.status_payload("cam-01", "offline", "connection_lost"),
        "info": p.info_payload("cam-01", "lab", "0.1.0", p.bundle_info("ssm-student", "1.2.0", 7, DEFAULT_LABELS),
                               "onnxruntime", ["results", "events"], location="hall"),
        "results": record,
        "events": p.ExpressionEvents("cam-01").update(record)[0],
        "stats": p.stats_payload("cam-01", 12.5, 30.0, 14.9, 3, 2,
                                 {"detect": p.LatencyStats(p50=4.0, p95=6.5, p99=8.0, max=9.0)}, 51.5, mqtt),
        "update_desired": p.UpdateDesired(**p.stamp(), bundle=BUNDLE, url="https://example.invalid/b.tar",
                                          sha256="ab" * 32, size=1234, target="group:lab", key_id="0123456789abcdef",
                                          signature="c2ln"),
        "update_state": p.UpdateState(**p.stamp(), device="cam-01", state="rolled_back", current=BUNDLE,
                                      desired=BUNDLE, reason="unhealthy", message="no frames after the switch"),
    }


def test_every_payload_validates_against_its_shipped_schema():
    examples = _examples()
    assert set(examples) == set(schemas.MODELS)
    for kind, payload in examples.items():
        data = json.loads(payload.to_json())
        _validator(kind).validate(data)
        assert data["schema_version"] == p.SCHEMA_VERSION
        # ts and ts_ms name the same millisecond
        parsed = datetime.fromisoformat(data["ts"].replace("Z", "+00:00"))
        assert round(parsed.timestamp() * 1000) == data["ts_ms"], kind


def test_shipped_schema_files_match_the_models():
    for kind in schemas.MODELS:
        assert schemas.load(kind) == json.loads(schemas.render(kind)), (
            f"edge/schemas/{kind}.json is stale: run python -m edge.publish.schemas --write")


@pytest.mark.parametrize(("kind", "mutate", "where"), [
    ("results", lambda d: d["faces"][0]["aus"].update(AU12=1.5), "1.5"),
    ("results", lambda d: d["faces"][0]["aus"].update(bogus=0.1), "bogus"),
    ("results", lambda d: d.pop("frame_id"), "frame_id"),
    ("results", lambda d: d.update(extra=1), "extra"),
    ("status", lambda d: d.update(state="sleeping"), "sleeping"),
    ("status", lambda d: d.update(schema_version=2), "2"),
    ("stats", lambda d: d.update(ts="yesterday"), "yesterday"),
    ("update_desired", lambda d: d.update(sha256="xyz"), "xyz"),
])
def test_schemas_reject_bad_payloads(kind, mutate, where):
    data = json.loads(_examples()[kind].to_json())
    mutate(data)
    with pytest.raises(jsonschema.ValidationError) as err:
        _validator(kind).validate(data)
    assert where in str(err.value)


def test_face_result_maps_head_vectors_to_labels():
    face = _face()
    assert face.top_expression == "happiness" and face.top_score == pytest.approx(0.7)
    assert list(face.aus) == DEFAULT_LABELS.au_keys
    assert face.active_aus == [k for k, v in zip(DEFAULT_LABELS.au_keys, AU, strict=True) if v >= 0.5]
    assert face.aus["AU1"] == pytest.approx(0.05) and face.aus["AU26"] == pytest.approx(0.95)
    assert face.box.w == 64 and face.box.x == 10.5


def test_builders_reject_bad_input_with_a_clear_message():
    n_au, n_fe = len(DEFAULT_LABELS.aus), len(DEFAULT_LABELS.expressions)
    with pytest.raises(ValueError, match="AU vectors have 3/3 entries, the label space 17"):
        p.face_result(0, (0, 0, 1, 1), 0.9, DEFAULT_LABELS, [0.1] * 3, [False] * 3, [0.1] * n_fe)
    with pytest.raises(ValueError, match="box must be"):
        p.face_result(0, (0, 0, 1), 0.9, DEFAULT_LABELS, [0.1] * n_au, [False] * n_au, [0.1] * n_fe)
    with pytest.raises(ValidationError, match="finite"):
        p.face_result(0, (0, 0, 1, 1), 0.9, DEFAULT_LABELS, [math.nan] * n_au, [False] * n_au, [0.1] * n_fe)
    with pytest.raises(ValidationError, match="top expression 'joy'"):
        p.FaceResult(track_id=0, box=p.Box(x=0, y=0, w=1, h=1), score=0.5, aus={"AU1": 0.2}, active_aus=[],
                     expressions={"happiness": 1.0}, top_expression="joy", top_score=1.0)
    with pytest.raises(ValidationError, match="active AUs"):
        p.FaceResult(track_id=0, box=p.Box(x=0, y=0, w=1, h=1), score=0.5, aus={"AU1": 0.2}, active_aus=["AU2"],
                     expressions={"happiness": 1.0}, top_expression="happiness", top_score=1.0)


def test_expression_events_start_update_end():
    events = p.ExpressionEvents("cam-01")
    t0 = 1_700_000_000.0
    r1 = p.result_record("cam-01", BUNDLE, 1, [_face(1, 0.9)], 5, epoch_s=t0)
    r2 = p.result_record("cam-01", BUNDLE, 2, [_face(1, 0.9), _face(2, 0.9)], 5, epoch_s=t0 + 0.5)
    r3 = p.result_record("cam-01", BUNDLE, 3, [_face(1, 0.05), _face(2, 0.9)], 5, epoch_s=t0 + 1.0)
    r4 = p.result_record("cam-01", BUNDLE, 4, [_face(2, 0.9)], 5, epoch_s=t0 + 2.0)
    got = [[(e.kind, e.track_id, e.expression, e.previous) for e in events.update(r)] for r in (r1, r2, r3, r4)]
    low = r3.faces[0].top_expression
    assert low != "happiness"
    assert got == [
        [("start", 1, "happiness", None)],
        [("start", 2, "happiness", None)],
        [("update", 1, low, "happiness")],
        [("end", 1, low, None)],
    ]
    end = events.update(r4)  # nothing changed for track 2 since r4
    assert end == []


def test_topic_layout():
    t = Topics("site/affect", "cam-01")
    assert (t.status, t.info, t.results, t.events, t.stats) == (
        "site/affect/cam-01/status", "site/affect/cam-01/info", "site/affect/cam-01/results",
        "site/affect/cam-01/events", "site/affect/cam-01/stats")
    assert t.update_desired == "site/affect/cam-01/update/desired"
    assert t.update_state == "site/affect/cam-01/update/state"
    assert t.group_update_desired("lab") == "site/affect/groups/lab/update/desired"
    assert all_devices("affect", "results") == "affect/+/results"
    assert device_of("site/affect", "site/affect/cam-01/update/state") == ("cam-01", "update/state")
    assert device_of("site/affect", "site/affect/groups/lab/update/desired") is None
    for bad in ("a/b", "a+", "#", "", "groups"):
        with pytest.raises(ValueError, match="device id"):
            Topics("affect", bad)


def test_home_assistant_discovery_templates_render_real_payloads():
    jinja2 = pytest.importorskip("jinja2")
    t = Topics("affect", "cam-01")
    examples = _examples()
    by_topic = {t.results: examples["results"], t.stats: examples["stats"], t.info: examples["info"],
                t.status: p.status_payload("cam-01", "online", "connected")}
    rendered = {}
    messages = discovery_messages("homeassistant", t, "0.1.0")
    for msg in messages:
        config = json.loads(msg.payload)
        assert msg.topic.startswith("homeassistant/") and msg.topic.endswith("/config")
        assert config["device"]["identifiers"] == ["affect_cam-01"]
        value = json.loads(by_topic[config["state_topic"]].to_json())
        rendered[config["unique_id"]] = jinja2.Template(config["value_template"]).render(value_json=value)
        if "availability_topic" in config:
            assert config["availability_topic"] == t.status
    assert rendered == {
        "affect_cam-01_top_expression": "happiness", "affect_cam-01_face_count": "2",
        "affect_cam-01_processed_fps": "14.9", "affect_cam-01_bundle_version": "1.2.0",
        "affect_cam-01_online": "online",
    }


@pytest.mark.parametrize("kind", sorted(schemas.MODELS))
def test_every_schema_requires_schema_version(kind):
    schema = schemas.load(kind)
    assert schema["required"][0] == "schema_version" and schema["properties"]["schema_version"]["const"] == 1
    data = json.loads(_examples()[kind].to_json())
    data.pop("schema_version")
    with pytest.raises(jsonschema.ValidationError, match="'schema_version' is a required property"):
        _validator(kind).validate(data)


# Home Assistant's own rule for an entity id (homeassistant.core.valid_entity_id).
HA_ENTITY_ID = r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$"


def test_discovery_uses_default_entity_id_not_the_deprecated_object_id():
    import re

    for device in ("cam-01", "Lobby_Cam--2"):
        for msg in discovery_messages("homeassistant", Topics("affect", device), "0.1.0"):
            config = json.loads(msg.payload)
            component = msg.topic.split("/")[1]
            assert "object_id" not in config, msg.topic
            assert config["default_entity_id"].startswith(f"{component}.affect_")
            assert re.match(HA_ENTITY_ID, config["default_entity_id"]), config["default_entity_id"]


def _doc_examples() -> list[tuple[str, dict]]:
    """(topic kind, payload) for every JSON example in docs/mqtt.md: a block belongs to the last line before
    it that starts with a topic kind in backticks (`stats` (...):)."""
    from pathlib import Path

    kinds = {"status", "info", "results", "events", "stats", "update/desired"}
    lines = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text().splitlines()
    found, kind, block = [], None, None
    for line in lines:
        if block is not None:
            if line.startswith("```"):
                text, pos, decoder = "\n".join(block), 0, json.JSONDecoder()
                order = ["update_desired", "update_state"] if kind == "update/desired" else [kind]
                for name in order:  # the update block holds a desired document and then a state report
                    obj, pos = decoder.raw_decode(text, pos)
                    found.append((name, obj))
                    pos += len(text[pos:]) - len(text[pos:].lstrip())
                assert not text[pos:].strip(), f"unexpected text after the {kind} example"
                block = None
            else:
                block.append(line)
        elif line.startswith("```json"):
            assert kind is not None, "a JSON example without a topic line before it"
            block = []
        elif line.startswith("`") and line[1:].split("`", 1)[0] in kinds:
            kind = line[1:].split("`", 1)[0]
    return found


def test_the_payload_examples_in_docs_mqtt_md_follow_the_shipped_schemas():
    examples = _doc_examples()
    assert sorted({kind for kind, _ in examples}) == sorted(schemas.MODELS)
    for kind, payload in examples:
        _validator(kind).validate(payload)
