"""The shipped mosquitto configs on a real broker: the device broker's local part (listener,
persistence) and the fleet ACL. The bridge needs a central broker with DNS and certificates,
so its file is only checked for the topics it forwards (they must match the ACL)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from mqtt_broker import Collector, Mosquitto, free_port, require_mosquitto
from paho.mqtt import publish
from paho.mqtt.enums import CallbackAPIVersion

CFG = Path(__file__).resolve().parents[1] / "firmware_cfg" / "mosquitto"
PASSWORDS = {"sensor-01": "pw1", "sensor-03": "pw3", "fleet-operator": "pwop"}


def local_device_conf(tmp_path: Path, port: int) -> Path:
    """device.conf with its site paths pointed into tmp_path; every other line as shipped."""
    text = (CFG / "device.conf").read_text()
    store, conf_d = tmp_path / "store", tmp_path / "conf.d"
    store.mkdir()
    conf_d.mkdir()
    replacements = {
        r"^listener 1883 127\.0\.0\.1$": f"listener {port} 127.0.0.1",
        r"^persistence_location .*$": f"persistence_location {store}/",
        r"^include_dir .*$": f"include_dir {conf_d}",
        r"^log_dest syslog$": "log_dest stderr",
    }
    for pattern, value in replacements.items():
        text, n = re.subn(pattern, value, text, flags=re.M)
        assert n == 1, f"device.conf no longer has a line matching {pattern}"
    if os.geteuid() == 0:
        text += "user root\n"  # otherwise mosquitto drops to user mosquitto, who cannot write tmp_path
    conf = tmp_path / "device.conf"
    conf.write_text(text)
    return conf


def start(conf: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([require_mosquitto(), "-c", str(conf)], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        try:
            client.connect("127.0.0.1", port, keepalive=5)
            client.disconnect()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(log.read_text())


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def test_device_broker_keeps_retained_state_across_restart(tmp_path: Path) -> None:
    port = free_port()
    conf, log = local_device_conf(tmp_path, port), tmp_path / "mosquitto.log"
    proc = start(conf, port, log)
    try:
        publish.single("affect/sensor-01/status", b"online", qos=1, retain=True, hostname="127.0.0.1", port=port,
                       protocol=paho.MQTTv5)
    finally:
        stop(proc)  # SIGTERM: mosquitto writes its persistence file
    assert list((tmp_path / "store").glob("*.db")), log.read_text()
    proc = start(conf, port, log)
    try:
        with Collector(port, ["affect/sensor-01/status"]) as sub:
            assert sub.wait_for(lambda msgs: any(m.payload == b"online" and m.retain for m in msgs), timeout=5)
    finally:
        stop(proc)


def acl_text() -> str:
    return (CFG / "central-acl.conf").read_text()


@pytest.fixture(scope="module")
def central(tmp_path_factory):
    with Mosquitto(tmp_path_factory.mktemp("central"), users=PASSWORDS, acl=acl_text()) as broker:
        yield broker


def send(broker: Mosquitto, user: str, topics: list[str]) -> None:
    msgs = [{"topic": t, "payload": t.encode(), "qos": 1} for t in topics]
    publish.multiple(msgs, hostname="127.0.0.1", port=broker.auth_port, protocol=paho.MQTTv5,
                     auth={"username": user, "password": PASSWORDS[user]}, client_id=f"{user}-pub-{free_port()}")


def test_device_writes_only_its_own_subtree(central: Mosquitto) -> None:
    operator = {"username": "fleet-operator", "password": PASSWORDS["fleet-operator"]}
    with Collector(central.auth_port, ["affect/#"], **operator) as op:
        denied = ["affect/sensor-02/results", "affect/groups/lobby/update/desired", "affect/other", "elsewhere/x"]
        allowed = ["affect/sensor-01/results", "affect/sensor-01/update/reported"]
        send(central, "sensor-01", denied + allowed)  # in order: denied ones would arrive before the last allowed
        assert op.wait_for(lambda msgs: allowed[-1] in {m.topic for m in msgs}), central.log()
        assert sorted(m.topic for m in op.messages) == sorted(allowed)


def test_device_reads_only_its_own_and_its_groups_desired_state(central: Mosquitto) -> None:
    topics = ["affect/sensor-01/update/desired", "affect/groups/lobby/update/desired",
              "affect/groups/canary/update/desired", "affect/sensor-02/update/desired", "affect/sensor-02/results"]
    with Collector(central.auth_port, topics, username="sensor-01", password=PASSWORDS["sensor-01"]) as dev:
        send(central, "fleet-operator", topics[2:] + topics[:2])  # denied first, allowed last
        assert dev.wait_for(lambda msgs: topics[1] in {m.topic for m in msgs}), central.log()
        assert sorted(m.topic for m in dev.messages) == sorted(topics[:2])


def test_bridge_forwards_only_what_the_acl_allows() -> None:
    """Every `out` topic of the bridge is writable by the device and every `in` topic readable under the ACL."""
    device, group = "sensor-01", "lobby"
    rules = re.findall(r"^topic (\S+) (in|out) \d$", (CFG / "bridge-central.conf").read_text(), flags=re.M)
    assert ("affect/sensor-01/#", "out") in rules
    inbound = {t for t, d in rules if d == "in"}
    assert inbound == {f"affect/{device}/update/desired", f"affect/groups/{group}/update/desired"}
    acl = acl_text()
    assert "pattern write affect/%u/#" in acl and "pattern read affect/%u/update/desired" in acl
    assert re.search(rf"^user {device}\ntopic read affect/groups/{group}/update/desired$", acl, flags=re.M)
    notification = re.search(r"^notification_topic (\S+)$", (CFG / "bridge-central.conf").read_text(), flags=re.M)
    assert notification and notification.group(1).startswith(f"affect/{device}/")
