"""The fleet's broker layout, run for real: the shipped central.conf + central-acl.conf on a central mosquitto
with TLS client certificates, two device mosquittos with the shipped device.conf + bridge-central.conf, and a
daemon publishing to each device broker, all on loopback with throwaway certificates.

Only site-specific values are replaced in the shipped files (ports, paths, the central address, the device id);
every rule is as shipped. Checks: routing up (results, status, info, stats, discovery) and down (desired
documents to the right device only), denial (cross-device writes and reads, dashboards and operators posing as
devices, client-id takeover of a bridge), a central outage (QoS 1 defaults lose nothing, bridge state right
afterwards) and a device broker restart (no superseded desired document sent back up).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from fleet_helpers import make_key, signed_tar
from mqtt_broker import ClientCert, Collector, free_port, make_fleet_pki, require_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from edge.fleet.operator import desired_document

pytestmark = pytest.mark.timeout(420)

CFG = Path(__file__).resolve().parents[1] / "firmware_cfg" / "mosquitto"
CLI = [sys.executable, "-m", "edge.cli.main"]
DEVICES = ("sensor-01", "sensor-02")  # both in group "lobby" in the shipped ACL; sensor-03 is in "canary"
IDENTITIES = [*DEVICES, "sensor-03", "dashboard", "homeassistant", "fleet-operator"]


def substitute(text: str, replacements: dict[str, str], name: str) -> str:
    """Replace whole lines; each pattern must match exactly once, so a changed shipped file fails loudly."""
    for pattern, value in replacements.items():
        text, n = re.subn(pattern, value, text, flags=re.M)
        assert n == 1, f"{name} no longer has exactly one line matching {pattern!r} ({n})"
    if os.geteuid() == 0:
        text += "user root\n"  # otherwise mosquitto drops to user mosquitto, who cannot read tmp_path
    return text


class Broker:
    """One mosquitto process on a config file; stop() + start() brings it back on the same port."""

    def __init__(self, conf: Path, port: int, log: Path) -> None:
        self.conf, self.port, self.log_path = conf, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([require_mosquitto(), "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(self.log())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(timeout=15)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


class Fleet:
    def __init__(self, root: Path, tiny_bundle: Path) -> None:
        self.root = root
        self.pki = make_fleet_pki(root / "pki", IDENTITIES)
        self.central_port = free_port()
        self.central = self._central()
        self.device_ports = {d: free_port() for d in DEVICES}
        self.devices = {d: self._device(d) for d in DEVICES}
        self.daemons: dict[str, subprocess.Popen] = {}
        self.tiny_bundle = tiny_bundle

    def cert(self, cn: str) -> ClientCert:
        return self.pki.clients[cn]

    def _central(self) -> Broker:
        work = self.root / "central"
        (work / "db").mkdir(parents=True)
        acl = work / "central-acl.conf"
        acl.write_text((CFG / "central-acl.conf").read_text())  # unchanged: the rules under test
        text = substitute((CFG / "central.conf").read_text(), {
            r"^persistence_location .*$": f"persistence_location {work / 'db'}/",
            r"^acl_file .*$": f"acl_file {acl}",
            r"^listener 8883$": f"listener {self.central_port} 127.0.0.1",
            r"^cafile .*$": f"cafile {self.pki.ca}",
            r"^certfile .*$": f"certfile {self.pki.server_cert}",
            r"^keyfile .*$": f"keyfile {self.pki.server_key}",
            r"^log_dest syslog$": "log_dest stderr\nlog_type information",
        }, "central.conf")
        (work / "central.conf").write_text(text)
        return Broker(work / "central.conf", self.central_port, work / "mosquitto.log")

    def _device(self, device: str) -> Broker:
        work = self.root / device
        (work / "db").mkdir(parents=True)
        (work / "conf.d").mkdir()
        port = self.device_ports[device]
        cert = self.cert(device)
        bridge = (CFG / "bridge-central.conf").read_text().replace("sensor-01", device)
        bridge = substitute(bridge, {
            r"^address central\.example\.net:8883$": f"address 127.0.0.1:{self.central_port}",
            r"^bridge_cafile .*$": f"bridge_cafile {cert.ca}",
            r"^bridge_certfile .*$": f"bridge_certfile {cert.cert}",
            r"^bridge_keyfile .*$": f"bridge_keyfile {cert.key}",
        }, "bridge-central.conf")
        bridge = bridge.replace("user root\n", "")  # only once, in the main file
        (work / "conf.d" / "bridge-central.conf").write_text(bridge)
        text = substitute((CFG / "device.conf").read_text(), {
            r"^listener 1883 127\.0\.0\.1$": f"listener {port} 127.0.0.1",
            r"^persistence_location .*$": f"persistence_location {work / 'db'}/",
            r"^include_dir .*$": f"include_dir {work / 'conf.d'}",
            r"^log_dest syslog$": "log_dest stderr\nlog_type information",
        }, "device.conf")
        (work / "device.conf").write_text(text)
        return Broker(work / "device.conf", port, work / "mosquitto.log")

    def start_daemon(self, device: str) -> None:
        """The sensor daemon with the shipped MQTT defaults (QoS, rate limit, discovery) on its device broker."""
        config = self.root / device / "sensor.toml"
        config.write_text(
            f'[device]\nid = "{device}"\ngroup = "lobby"\n[source]\nuri = "demo"\nfps = 5\n'
            f'[model]\nbundle = "{self.tiny_bundle}"\nthreads = 1\n[stats]\ninterval_s = 1.0\n'
            f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {self.device_ports[device]}\n'
            f'reconnect_initial_s = 0.2\nreconnect_max_s = 2.0\n')
        with (self.root / device / "daemon.log").open("ab") as log:
            self.daemons[device] = subprocess.Popen([*CLI, "run", "--config", str(config)],
                                                    stdout=subprocess.DEVNULL, stderr=log)

    def logs(self) -> str:
        parts = [f"--- central\n{self.central.log()}"]
        for d in DEVICES:
            parts.append(f"--- {d} broker\n{self.devices[d].log()}")
            path = self.root / d / "daemon.log"
            parts.append(f"--- {d} daemon\n{path.read_text(errors='replace')[-2000:] if path.exists() else ''}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.daemons.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for broker in [*self.devices.values(), self.central]:
            broker.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_bundle):
    require_mosquitto()
    f = Fleet(tmp_path_factory.mktemp("fleet-brokers"), tiny_bundle)
    try:
        f.central.start()
        for broker in f.devices.values():
            broker.start()
        for device in DEVICES:
            f.start_daemon(device)
        yield f
    finally:
        f.close()


def payloads(col: Collector, topic: str) -> list[dict]:
    return [json.loads(m.payload) for m in col.on(topic) if m.payload]


def local(fleet: Fleet, device: str, topics: list[str]) -> Collector:
    """An anonymous subscriber on the device's own broker (a local client, as device.conf allows)."""
    return Collector(fleet.device_ports[device], topics)


def central(fleet: Fleet, identity: str, topics: list[str], **kw) -> Collector:
    return Collector(fleet.central_port, topics, tls=fleet.cert(identity), **kw)


class Publisher:
    """A TLS client of the central broker under one identity; `send` returns the broker's PUBACK reason."""

    def __init__(self, fleet: Fleet, identity: str, client_id: str | None = None) -> None:
        cert = fleet.cert(identity)
        self.acks: dict[int, object] = {}
        self.done = threading.Condition()
        self.connected = threading.Event()
        self.disconnects: list[str] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"{identity}-{free_port()}",
                                  protocol=paho.MQTTv5)
        self.client.tls_set(ca_certs=str(cert.ca), certfile=str(cert.cert), keyfile=str(cert.key))
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(str(rc))
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", fleet.central_port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), f"{identity} could not connect to central"

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self.done:
            self.acks[mid] = reason
            self.done.notify_all()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> object:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self.done:
            assert self.done.wait_for(lambda: info.mid in self.acks, 10), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sentinel(fleet: Fleet, observer: Collector, identity: str, topic: str) -> None:
    """Publish a marker on `topic` (the observer must subscribe to it) and wait for it: whatever the broker
    routed before the marker (a denied message, had it leaked) has then reached the observer too. `identity`
    must not be the observer's: one certificate holds one session (central.conf binds client id to it)."""
    marker = f"sentinel-{time.monotonic_ns()}".encode()
    pub = Publisher(fleet, identity)
    try:
        assert not pub.send(topic, marker).is_failure
    finally:
        pub.close()
    assert observer.wait_for(lambda msgs: any(m.payload == marker for m in msgs), 15), fleet.logs()


def wait_daemons_up(fleet: Fleet, col: Collector, timeout: float = 120) -> None:
    ok = col.wait_for(lambda _: all(payloads(col, f"affect/{d}/results") for d in DEVICES), timeout)
    assert ok, fleet.logs()


def test_results_status_info_stats_and_discovery_of_both_devices_reach_central(fleet):
    topics = ["affect/+/status", "affect/+/info", "affect/+/results", "affect/+/stats", "affect/+/bridge/state",
              "homeassistant/#"]
    with central(fleet, "dashboard", topics) as col:
        wait_daemons_up(fleet, col)
        assert col.wait_for(lambda _: all(len(payloads(col, f"affect/{d}/results")) >= 4
                                          and payloads(col, f"affect/{d}/stats") for d in DEVICES), 60), fleet.logs()
        for d in DEVICES:
            status = payloads(col, f"affect/{d}/status")
            assert status[-1]["state"] == "online"
            assert payloads(col, f"affect/{d}/info")[-1]["bundle"]["name"] == "unit-test"
            assert [m.payload for m in col.on(f"affect/{d}/bridge/state")][-1] == b"1"
            configs = [m for m in col.messages if m.topic.startswith("homeassistant/") and f"affect_{d}/" in m.topic]
            assert len({m.topic for m in configs}) == 5, [m.topic for m in configs]  # (d): HA sees every entity
            assert all("default_entity_id" in json.loads(m.payload) for m in configs)
    # `listen` with a client certificate (g), as Home Assistant's identity: both devices, nothing else.
    ha = fleet.cert("homeassistant")
    proc = subprocess.run([*CLI, "listen", "--host", "127.0.0.1", "--port", str(fleet.central_port), "--ca-file",
                           str(ha.ca), "--cert-file", str(ha.cert), "--key-file", str(ha.key), "--once", "--wait",
                           "3", "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(table) == sorted(DEVICES) and all(table[d]["state"] == "online" for d in DEVICES), table


def _doc(fleet: Fleet, kit: dict, target: str) -> dict:
    """A fresh signed document (a new ts_ms each call, so a new payload)."""
    time.sleep(0.002)
    return desired_document(kit["tar"], "https://models.example.net/b2.tar", target, kit["key"])


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("brokers-kit")
    key = make_key(root / "keys")
    return {"key": key, "keyfile": root / "keys" / "fleet.key", "tar": signed_tar(tiny_bundle, key, root / "b.tar")}


def test_desired_documents_reach_the_right_device_only(fleet, kit):
    desired = ["affect/+/update/desired", "affect/groups/+/update/desired"]
    op = fleet.cert("fleet-operator")
    cli = [str(kit["tar"]), "--url", "https://models.example.net/b.tar", "--key", str(kit["keyfile"]), "--host",
           "127.0.0.1", "--port", str(fleet.central_port), "--ca-file", str(op.ca), "--cert-file", str(op.cert),
           "--key-file", str(op.key)]
    lobby = "affect/groups/lobby/update/desired"
    with local(fleet, "sensor-01", desired) as one, local(fleet, "sensor-02", desired) as two:
        for where in (["--device", "sensor-01"], ["--group", "lobby"]):
            proc = subprocess.run([*CLI, "fleet", "publish", *cli, *where], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        assert one.wait_for(lambda _: one.on("affect/sensor-01/update/desired") and one.on(lobby), 30), fleet.logs()
        assert two.wait_for(lambda _: two.on(lobby), 30), fleet.logs()
        # Documents for another device and another group, then the lobby document again as a barrier: it goes
        # down both bridges after them, so once it has arrived anything misrouted would have arrived too.
        pub = Publisher(fleet, "fleet-operator")
        try:
            for target, topic in (("device:sensor-03", "affect/sensor-03/update/desired"),
                                  ("group:canary", "affect/groups/canary/update/desired"),
                                  ("group:lobby", lobby)):
                assert not pub.send(topic, json.dumps(_doc(fleet, kit, target)).encode(), retain=True).is_failure
        finally:
            pub.close()
        for col in (one, two):
            assert col.wait_for(lambda _, c=col: len(c.on(lobby)) >= 2, 30), fleet.logs()
        assert {m.topic for m in one.messages} == {"affect/sensor-01/update/desired", lobby}
        assert {m.topic for m in two.messages} == {lobby}


FAKE = b'{"fake": true}'


def attempt(fleet: Fleet, identity: str, topics: list[str]) -> None:
    """Publish to each topic as `identity`; each must be refused (MQTT 5 PUBACK: Not authorized)."""
    pub = Publisher(fleet, identity)
    try:
        for topic in topics:
            reason = pub.send(topic, FAKE, retain=True)
            assert reason.is_failure and "authori" in str(reason).lower(), (identity, topic, str(reason))
    finally:
        pub.close()


def test_no_identity_can_write_or_read_what_is_not_its_own(fleet):
    # sensor-03 is a device of the ACL with no bridge running here, so its certificate can be used freely.
    with central(fleet, "fleet-operator", ["affect/#"]) as watch:  # reads every device topic
        attempt(fleet, "sensor-03", ["affect/sensor-01/results", "affect/sensor-01/status",
                                     "affect/sensor-01/update/desired", "affect/sensor-03/update/desired",
                                     "affect/groups/canary/update/desired", "affect/sensor-03/anything"])
        # (a) dashboards posing as a device: the old `pattern write affect/%u/#` allowed exactly this.
        attempt(fleet, "dashboard", ["affect/dashboard/status", "affect/dashboard/results", "affect/dashboard/info",
                                     "affect/dashboard/update/desired", "affect/sensor-01/status"])
        attempt(fleet, "homeassistant", ["affect/homeassistant/status", "affect/sensor-02/results"])
        sentinel(fleet, watch, "sensor-03", "affect/sensor-03/status")
        assert [m.topic for m in watch.messages if m.payload == FAKE] == []
    with central(fleet, "dashboard", ["affect/#", "homeassistant/#"]) as watch:
        attempt(fleet, "fleet-operator", ["affect/sensor-01/results", "affect/operator/status"])
        attempt(fleet, "sensor-03", ["homeassistant/sensor/affect_sensor-01/top_expression/config"])
        attempt(fleet, "homeassistant", ["homeassistant/sensor/affect_fake/x/config"])
        sentinel(fleet, watch, "sensor-03", "affect/sensor-03/status")
        assert [m.topic for m in watch.messages if m.payload == FAKE] == []
    # Reads: a device gets neither another device's nor another group's documents, nor other devices' data.
    with central(fleet, "sensor-03", ["affect/sensor-01/update/desired", "affect/groups/lobby/update/desired",
                                      "affect/sensor-01/results", "affect/sensor-03/update/desired"]) as nosy:
        sentinel(fleet, nosy, "fleet-operator", "affect/sensor-03/update/desired")  # its own: the barrier
        assert {m.topic for m in nosy.messages} == {"affect/sensor-03/update/desired"}
    # `listen` as a dashboard shows the two devices and no fake one.
    dash = fleet.cert("dashboard")
    proc = subprocess.run([*CLI, "listen", "--host", "127.0.0.1", "--port", str(fleet.central_port), "--ca-file",
                           str(dash.ca), "--cert-file", str(dash.cert), "--key-file", str(dash.key), "--once",
                           "--wait", "3", "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout.strip().splitlines()[-1])) == sorted(DEVICES)


def test_no_certificate_can_knock_a_bridge_offline_by_taking_its_client_id(fleet):
    topics = ["affect/sensor-01/bridge/state"]
    with local(fleet, "sensor-01", topics) as bridge_state, central(fleet, "dashboard", topics) as seen:
        assert bridge_state.wait_for(lambda msgs: msgs and msgs[-1].payload == b"1", 30), fleet.logs()
        before = len(bridge_state.messages)
        for client_id in ("sensor-01", "sensor-01-bridge"):  # (f): the bridge's id, and its id before this fix
            thief = Publisher(fleet, "sensor-03", client_id=client_id)
            try:
                # A takeover shows at once as "0" on the device broker; instead, results keep crossing the bridge.
                with central(fleet, "fleet-operator", ["affect/sensor-01/results"]) as results:
                    assert results.wait_for(lambda msgs: len(msgs) >= 2, 30), fleet.logs()
                assert thief.client.is_connected() and thief.disconnects == []
            finally:
                thief.close()
        assert [m.payload for m in bridge_state.messages[before:]] == []
        assert [m.payload for m in seen.messages][-1] == b"1"


def test_a_central_outage_loses_no_qos1_message_and_bridges_show_up_afterwards(fleet):
    kinds = ["results", "stats"]
    locals_ = {d: local(fleet, d, [f"affect/{d}/{k}" for k in kinds]) for d in DEVICES}
    # A dashboard with a persistent session: central keeps it, and what is queued for it, across the restart.
    watch = central(fleet, "dashboard", [f"affect/+/{k}" for k in kinds], persistent=True)
    try:
        wait_daemons_up(fleet, watch)
        floor = time.time() + 1.0  # both subscribers are in place well before this
        assert watch.wait_for(lambda _: all(any(p["ts_ms"] > floor * 1000 for p in payloads(watch, f"affect/{d}/stats"))
                                            for d in DEVICES), 30), fleet.logs()
        fleet.central.stop()
        down = time.time()
        time.sleep(4.5)  # the outage itself, not a wait for a condition
        fleet.central.start()
        up = time.time()
        ceiling = up + 1.0  # everything published up to a second after central came back

        def caught_up(_msgs) -> bool:
            return all(any(p["ts_ms"] > (ceiling + 1.0) * 1000 for p in payloads(watch, f"affect/{d}/results"))
                       for d in DEVICES)

        assert watch.wait_for(caught_up, 120), fleet.logs()
        for d in DEVICES:
            for kind in kinds:
                topic = f"affect/{d}/{kind}"
                sent = {m.payload for m in locals_[d].on(topic) if floor * 1000 <= json.loads(m.payload)["ts_ms"]
                        <= ceiling * 1000}
                got = {m.payload for m in watch.on(topic)}
                during = [p for p in sent if down * 1000 <= json.loads(p)["ts_ms"] <= up * 1000]
                assert during, f"{topic}: nothing was published during the outage"
                assert sent <= got, f"{topic}: {len(sent - got)} of {len(sent)} messages lost"
                print(f"{topic}: {len(sent)} messages around a {up - down:.1f} s outage, {len(during)} during it, "
                      f"all delivered")
    finally:
        watch.close()
        for col in locals_.values():
            col.close()
    # (c) central shows both bridges up: the bridges' own "1", with no stale local "0" forwarded after it.
    with central(fleet, "dashboard", ["affect/+/bridge/state", "affect/sensor-03/status"]) as state:
        assert state.wait_for(lambda _: all(state.on(f"affect/{d}/bridge/state") for d in DEVICES), 30)
        sentinel(fleet, state, "sensor-03", "affect/sensor-03/status")
        assert {d: state.on(f"affect/{d}/bridge/state")[-1].payload for d in DEVICES} == dict.fromkeys(DEVICES, b"1")


def test_a_device_broker_restart_does_not_send_a_superseded_desired_document_back_up(fleet, kit):
    topic = "affect/sensor-01/update/desired"
    op = Publisher(fleet, "fleet-operator")
    try:
        first = json.dumps(_doc(fleet, kit, "device:sensor-01")).encode()
        op.send(topic, first, retain=True)
        with local(fleet, "sensor-01", [topic]) as dev:
            assert dev.wait_for(lambda msgs: bool(msgs) and msgs[-1].payload == first, 30), fleet.logs()
        fleet.devices["sensor-01"].stop()  # uplink gone; the device broker keeps `first` retained on disk
        second = json.dumps(_doc(fleet, kit, "device:sensor-01")).encode()
        assert second != first
        op.send(topic, second, retain=True)
        fleet.devices["sensor-01"].start()
        with local(fleet, "sensor-01", [topic]) as dev:
            assert dev.wait_for(lambda _: dev.on(topic)[-1:] and dev.on(topic)[-1].payload == second, 60), \
                fleet.logs()
        # (b) the reconnect did not put the device broker's old retained copy back over central's newer one.
        with central(fleet, "dashboard", [topic, "affect/sensor-03/update/desired"]) as fresh:
            sentinel(fleet, fresh, "fleet-operator", "affect/sensor-03/update/desired")
            assert [m.payload for m in fresh.on(topic)] == [second]
    finally:
        op.close()
