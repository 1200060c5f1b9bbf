"""The shipped mosquitto configs on a real broker: the device broker's local part (listener,
persistence) and the fleet ACL with password users; and the shipped bridge and ACL files against the
per-device generator (`affect-sensor fleet broker-config`). The whole layout with TLS client
certificates, bridges and daemons runs in test_fleet_brokers.py."""

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
        denied = ["affect/sensor-02/results", "affect/groups/lobby/update/desired", "affect/other", "elsewhere/x",
                  "affect/sensor-01/update/desired", "affect/sensor-01/update/reported"]
        allowed = ["affect/sensor-01/results", "affect/sensor-01/update/state"]
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


def test_shipped_bridge_and_acl_are_what_the_generator_makes_and_have_no_patterns() -> None:
    """The bridge forwards exactly the topics the ACL lets that device write, and brings down exactly what it
    may read; both are the generator's output, and no ACL rule is a pattern (patterns reach every user)."""
    from edge.fleet.broker_config import DeviceTopics, acl_block, bridge_topic_lines

    bridge = (CFG / "bridge-central.conf").read_text()
    shipped = "".join(line + "\n" for line in bridge.splitlines() if line.startswith("topic "))
    assert shipped == bridge_topic_lines(DeviceTopics("affect", "sensor-01", "lobby"))
    notification = re.search(r"^notification_topic (\S+)$", bridge, flags=re.M)
    assert notification and notification.group(1) == DeviceTopics("affect", "sensor-01", "lobby").bridge_state()
    acl = acl_text()
    assert not re.search(r"^\s*pattern\b", acl, flags=re.M)
    blocks = {b.splitlines()[0].split()[1]: b.strip() for b in re.split(r"\n(?=user )", acl) if b.startswith("user ")}
    for device, group in (("sensor-01", "lobby"), ("sensor-02", "lobby"), ("sensor-03", "canary")):
        assert blocks[device].split("\n\n")[0] == acl_block(DeviceTopics("affect", device, group)).strip()
