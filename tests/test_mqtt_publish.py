"""The publisher against a real mosquitto: delivery, retained status/Last Will, TLS, auth, ACL, outage buffering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jsonschema
import numpy as np
import pytest
from mqtt_broker import Collector, Mosquitto, free_port, make_tls

from edge.config.models import MQTTConfig
from edge.labels import DEFAULT_LABELS
from edge.publish import payloads as p
from edge.publish import schemas
from edge.publish.client import MqttPublisher

pytestmark = pytest.mark.timeout(120)

BUNDLE = p.BundleRef(name="ssm-student", version="1.2.0", build=7)
ACL = textwrap.dedent("""\
    user sensor
    topic readwrite affect/cam-acl/status
    topic readwrite affect/cam-acl/results
    topic read affect/#
""")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    work = tmp_path_factory.mktemp("broker")
    with Mosquitto(work, users={"sensor": "s3cret"}, acl=ACL, tls=make_tls(work / "tls")) as b:
        yield b


def _cfg(port: int, **kw) -> MQTTConfig:
    base = dict(enabled=True, port=port, reconnect_initial_s=0.1, reconnect_max_s=0.5, discovery_prefix=None)
    return MQTTConfig.model_validate({**base, **kw})


def _record(frame_id: int) -> p.ResultRecord:
    au = np.linspace(0, 1, len(DEFAULT_LABELS.aus))
    fe = np.full(len(DEFAULT_LABELS.expressions), 0.1)
    fe[1] = 0.4
    face = p.face_result(1, (0, 0, 50, 60), 0.9, DEFAULT_LABELS, au, au > 0.5, fe)
    return p.result_record("cam-01", BUNDLE, frame_id, [face], 5.0)


def _frames(col: Collector, topic: str) -> list[int]:
    return [json.loads(m.payload)["frame_id"] for m in col.on(topic)]


def _validate(kind: str, payload: bytes) -> None:
    schema = schemas.load(kind)
    jsonschema.validators.validator_for(schema)(schema).validate(json.loads(payload))


def test_delivery_of_every_topic_validates_and_rate_limit_keeps_latest(broker):
    with Collector(broker.plain_port, ["affect/#", "homeassistant/#"]) as col:
        pub = MqttPublisher(_cfg(broker.plain_port, results_max_hz=4, discovery_prefix="homeassistant"),
                            "cam-01", "0.1.0")
        pub.set_info(p.info_payload("cam-01", "lab", "0.1.0", None, "onnxruntime", ["results"]))
        pub.start()
        try:
            assert pub.wait_connected(10), pub.last_error
            for i in range(20):  # far faster than 4 Hz
                assert pub.publish_result(_record(i))
            record = _record(20)
            events = p.ExpressionEvents("cam-01").update(record)
            assert pub.publish_event(events[0])
            pub.publish_stats(p.stats_payload("cam-01", 1.0, 30, 15, 0, 1, {}, mqtt=pub.stats()))
            pub.publish_update_state(p.UpdateState(**p.stamp(), device="cam-01", state="idle", current=None,
                                                   desired=None))
            t = pub.topics
            assert col.wait_for(lambda _: 19 in _frames(col, t.results), timeout=5), _frames(col, t.results)
            assert col.wait_for(lambda m: all(col.on(x) for x in (t.events, t.stats, t.update_state, t.info)))
        finally:
            pub.stop()
        frames = _frames(col, t.results)
        assert frames[0] == 0 and frames[-1] == 19 and len(frames) <= 4  # trailing edge: the latest always arrives
        assert pub.stats().rate_limited == 20 - len(frames)
        for kind, topic in (("results", t.results), ("events", t.events), ("stats", t.stats),
                            ("info", t.info), ("update_state", t.update_state), ("status", t.status)):
            for m in col.on(topic):
                _validate(kind, m.payload)
        assert col.wait_for(lambda _: len(col.on(t.status)) == 2, timeout=5)
        assert [json.loads(m.payload)["state"] for m in col.on(t.status)] == ["online", "offline"]
        assert len([m for m in col.messages if m.topic.startswith("homeassistant/")]) == 5


PUBLISHER_SCRIPT = """
import sys, time
from edge.config.models import MQTTConfig
from edge.publish.client import MqttPublisher
from edge.publish.payloads import info_payload
pub = MqttPublisher(MQTTConfig.model_validate_json(sys.argv[1]), "cam-lwt", "0.1.0")
pub.set_info(info_payload("cam-lwt", "lab", "0.1.0", None, "onnxruntime", ["results"]))
pub.start()
assert pub.wait_connected(10), pub.last_error
assert pub.wait_idle(10)
print("ready", flush=True)
time.sleep(60)
"""


def test_retained_status_info_and_last_will_on_sigkill(broker):
    cfg = _cfg(broker.plain_port)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER_SCRIPT, cfg.model_dump_json()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line
        # a subscriber arriving later gets the retained state
        with Collector(broker.plain_port, ["affect/cam-lwt/#"]) as late:
            assert late.wait_for(lambda m: len(m) >= 2, timeout=5)
            retained = {m.topic: (m.retain, json.loads(m.payload)) for m in late.messages}
            assert retained["affect/cam-lwt/status"][0] and retained["affect/cam-lwt/status"][1]["state"] == "online"
            assert retained["affect/cam-lwt/info"][0] and retained["affect/cam-lwt/info"][1]["device"] == "cam-lwt"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            assert late.wait_for(lambda _: len(late.on("affect/cam-lwt/status")) == 2, timeout=10)
            will = json.loads(late.on("affect/cam-lwt/status")[-1].payload)
            _validate("status", late.on("affect/cam-lwt/status")[-1].payload)
            assert (will["state"], will["reason"]) == ("offline", "connection_lost")
        with Collector(broker.plain_port, ["affect/cam-lwt/status"]) as after:  # the will itself is retained
            assert after.wait_for(lambda m: len(m) == 1, timeout=5)
            assert after.messages[0].retain and json.loads(after.messages[0].payload)["state"] == "offline"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_tls_with_right_ca_and_client_cert_connects_wrong_ca_is_refused(broker, tmp_path):
    tls = broker.tls
    good = MqttPublisher(_cfg(broker.tls_port, tls={"enabled": True, "ca_file": tls.ca, "cert_file": tls.client_cert,
                                                    "key_file": tls.client_key}), "cam-tls", "0.1.0")
    good.start()
    try:
        assert good.wait_connected(10), good.last_error
    finally:
        good.stop()
    bad = MqttPublisher(_cfg(broker.tls_port, tls={"enabled": True, "ca_file": tls.other_ca,
                                                   "cert_file": tls.client_cert, "key_file": tls.client_key}),
                        "cam-tls2", "0.1.0")
    bad.start()
    try:
        assert not bad.wait_connected(1.5)
        assert "certificate verify failed" in (bad.last_error or "")
    finally:
        bad.stop(drain_timeout=0.5)
    no_cert = MqttPublisher(_cfg(broker.tls_port, tls={"enabled": True, "ca_file": tls.ca}), "cam-tls3", "0.1.0")
    no_cert.start()
    try:
        assert not no_cert.wait_connected(1.5), "the TLS listener requires a client certificate"
        assert no_cert.last_error
    finally:
        no_cert.stop(drain_timeout=0.5)


def test_wrong_password_is_refused(broker, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("wrong\n")
    pub = MqttPublisher(_cfg(broker.auth_port, username="sensor", password={"file": secret}), "cam-acl", "0.1.0")
    pub.start()
    try:
        assert not pub.wait_connected(1.5)
        assert pub.last_error == "broker refused the connection: Not authorized"
    finally:
        pub.stop(drain_timeout=0.5)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_acl_denied_topic(broker, monkeypatch, protocol):
    monkeypatch.setenv("TEST_MQTT_PW", "s3cret")
    cfg = _cfg(broker.auth_port, username="sensor", password={"env": "TEST_MQTT_PW"}, protocol=protocol)
    with Collector(broker.plain_port, ["affect/cam-acl/#"]) as col:
        pub = MqttPublisher(cfg, "cam-acl", "0.1.0")
        pub.start()
        try:
            assert pub.wait_connected(10), pub.last_error
            record = _record(1)
            event = p.ExpressionEvents("cam-acl").update(record)[0]
            assert pub.publish_event(event)  # QoS 1 to a topic the ACL denies
            assert pub.wait_idle(10)
            stats = pub.stats()
            def online(_: object) -> bool:  # an allowed topic does get through
                return any(json.loads(m.payload)["state"] == "online" for m in col.on("affect/cam-acl/status"))

            assert col.wait_for(online, timeout=5)
            time.sleep(0.2)
            assert not col.on("affect/cam-acl/events")  # the broker never delivers it
            if protocol == "5":
                assert stats.rejected == 1
                assert stats.last_error == ("broker refused publish to affect/cam-acl/events: Not authorized "
                                            "(MQTT 5 reason code 0x87)")
            else:  # MQTT 3.1.1 has no negative PUBACK: mosquitto acknowledges and discards
                assert stats.rejected == 0 and stats.acked >= 2 and stats.last_error is None
        finally:
            pub.stop()


def test_broker_outage_backlog_in_order_and_exact_drop_count(tmp_path):
    bound, extra = 30, 12
    topic = "affect/cam-01/results"
    with (Mosquitto(tmp_path, persistence=True) as outage_broker,
          # a dashboard with a persistent session: the broker keeps its subscription across the restart
          Collector(outage_broker.plain_port, [topic], client_id="dashboard-1", persistent=True) as col):
        cfg = _cfg(outage_broker.plain_port, qos_results=1, results_max_hz=0, buffer_max_messages=bound,
                   buffer_dir=tmp_path / "buf")
        pub = MqttPublisher(cfg, "cam-01", "0.1.0")
        pub.start()
        try:
            assert pub.wait_connected(10), pub.last_error
            for i in range(10):
                pub.publish_result(_record(i))
            assert pub.wait_idle(10)
            assert col.wait_for(lambda _: len(_frames(col, topic)) == 10, timeout=5)
            outage_broker.stop()
            deadline = time.monotonic() + 10
            while pub.stats().connected and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not pub.stats().connected
            for i in range(10, 10 + bound + extra):
                assert pub.publish_result(_record(i))
            deadline = time.monotonic() + 10
            while (pub.stats().buffered + pub.stats().dropped_buffer_full < bound + extra
                   and time.monotonic() < deadline):  # the publisher thread has taken in every message
                time.sleep(0.02)
            stats = pub.stats()
            assert (stats.buffered, stats.dropped_buffer_full) == (bound, extra)
            outage_broker.start()
            assert pub.wait_connected(10), pub.last_error
            assert pub.wait_idle(15)
            expected = list(range(10)) + list(range(10 + extra, 10 + bound + extra))
            assert col.wait_for(lambda _: set(expected) <= set(_frames(col, topic)), 10), _frames(col, topic)
            time.sleep(0.2)
            got = _frames(col, topic)
            assert list(dict.fromkeys(got)) == expected  # in order; nothing within the bound lost, none beyond it
            assert pub.stats().dropped_buffer_full == extra
        finally:
            pub.stop(drain_timeout=1)


def test_listen_prints_live_table_and_reports_refusal(broker, monkeypatch, capsys):
    import threading

    from edge.cli.main import main

    pub = MqttPublisher(_cfg(broker.plain_port, results_max_hz=0), "cam-listen", "0.1.0")
    pub.set_info(p.info_payload("cam-listen", "lab", "0.1.0",
                                p.bundle_info("ssm-student", "1.2.0", 7, DEFAULT_LABELS), "onnxruntime", []))
    pub.start()
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.is_set():
            pub.publish_result(p.result_record("cam-listen", BUNDLE, i, _record(i).faces, 5.0))
            i += 1
            stop.wait(0.05)

    feeder = threading.Thread(target=feed)
    try:
        assert pub.wait_connected(10) and pub.wait_idle(10)
        feeder.start()
        code = main(["listen", "--port", str(broker.plain_port), "--once", "--wait", "0.8"])
        out = capsys.readouterr().out
        assert code == 0
        row = next(line for line in out.splitlines() if line.startswith("cam-listen"))
        assert "online" in row and "ssm-student 1.2.0" in row and "happiness (0.4" in row
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join()
        pub.stop()
    monkeypatch.setenv("TEST_MQTT_PW", "wrong")
    code = main(["listen", "--port", str(broker.auth_port), "--username", "sensor", "--password-env", "TEST_MQTT_PW",
                 "--once"])
    assert code == 2
    assert "broker refused the connection: Not authorized" in capsys.readouterr().err


@pytest.mark.parametrize("qos", [0, 1])
def test_the_result_the_rate_limit_holds_is_sent_at_shutdown(broker, qos):
    topic = "affect/cam-flush/results"
    with Collector(broker.plain_port, [topic]) as col:
        pub = MqttPublisher(_cfg(broker.plain_port, results_max_hz=0.1, qos_results=qos), "cam-flush", "0.1.0")
        pub.start()
        try:
            assert pub.wait_connected(10), pub.last_error
            for i in range(5):  # 0 goes at once; 1..4 replace each other, 4 is held for the 10 s trailing edge
                assert pub.publish_result(_record(i))
        finally:
            pub.stop()  # long before the interval ends: the held result must not be lost
        assert col.wait_for(lambda _: 4 in _frames(col, topic), timeout=10), _frames(col, topic)
        assert _frames(col, topic) == [0, 4]
        stats = pub.stats()
        assert (stats.rate_limited, stats.dropped_offline, stats.published) == (3, 0, 3)  # 0, 4 and the status


def test_a_held_result_that_cannot_be_sent_at_shutdown_is_counted_as_dropped():
    pub = MqttPublisher(_cfg(free_port(), results_max_hz=0.1, qos_results=0), "cam-flush", "0.1.0")
    pub.start()
    try:
        assert pub.publish_result(_record(0)) and pub.publish_result(_record(1))
    finally:
        pub.stop(drain_timeout=0.5)
    stats = pub.stats()
    assert (stats.connected, stats.dropped_offline, stats.rate_limited) == (False, 2, 0)
