"""A real mosquitto broker for tests: plain, authenticated (password file + ACL) and TLS listeners.

Reusable by any test that needs MQTT (publishing, fleet updates):

    from mqtt_broker import Mosquitto, make_tls, Collector
    with Mosquitto(tmp_path, users={"sensor": "pw"}, acl=ACL, tls=make_tls(tmp_path)) as broker:
        broker.plain_port, broker.auth_port, broker.tls_port

Ports are free loopback ports picked once, so `stop()` + `start()` brings the
broker back where clients expect it. Certificates are generated with
`cryptography` (CA, server cert for 127.0.0.1/localhost, a client cert, and an
unrelated CA for negative tests). Needs the `mosquitto` binary (apt); tests
skip cleanly without it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def require_mosquitto() -> str:
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto broker not installed (apt-get install mosquitto)")
    return MOSQUITTO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: clients trusting only it must be refused


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, ca: bool, sans: list | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)  # mosquitto may drop privileges; it must still read these (test material only)
    return path


def make_tls(directory: Path) -> TLSFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def pem(c) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("affect test CA", ca_key, "affect test CA", ca_key, ca=True)
    other = _cert("unrelated CA", other_key, "unrelated CA", other_key, ca=True)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _cert("localhost", server_key, "affect test CA", ca_key, ca=False, sans=sans)
    client = _cert("sensor-client", client_key, "affect test CA", ca_key, ca=False)
    return TLSFiles(
        ca=_write(directory / "ca.crt", pem(ca)),
        server_cert=_write(directory / "server.crt", pem(server)),
        server_key=_write(directory / "server.key", pem_key(server_key)),
        client_cert=_write(directory / "client.crt", pem(client)),
        client_key=_write(directory / "client.key", pem_key(client_key)),
        other_ca=_write(directory / "other-ca.crt", pem(other)),
    )


@dataclass(frozen=True)
class ClientCert:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class FleetPKI:
    """A throwaway fleet CA, a broker certificate for 127.0.0.1/localhost and one client certificate per CN."""

    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, ClientCert]


def make_fleet_pki(directory: Path, client_cns: list[str]) -> FleetPKI:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key, server_key = _key(), _key()
    ca = _write(directory / "ca.crt", _cert("fleet test CA", ca_key, "fleet test CA", ca_key, ca=True)
                .public_bytes(serialization.Encoding.PEM))
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _cert("central", server_key, "fleet test CA", ca_key, ca=False, sans=sans)
    clients = {}
    for cn in client_cns:
        key = _key()
        cert = _cert(cn, key, "fleet test CA", ca_key, ca=False)
        clients[cn] = ClientCert(ca, _write(directory / f"{cn}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                                 _write(directory / f"{cn}.key", pem_key(key)))
    return FleetPKI(ca, _write(directory / "central.crt", server.public_bytes(serialization.Encoding.PEM)),
                    _write(directory / "central.key", pem_key(server_key)), clients)


# ---------------------------------------------------------------- broker


class Mosquitto:
    """One mosquitto process with up to three loopback listeners; `with` starts and stops it."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, acl: str | None = None,
                 tls: TLSFiles | None = None, require_client_cert: bool = True, persistence: bool = False,
                 extra_config: tuple[str, ...] = ()) -> None:
        self.binary = require_mosquitto()
        self.dir = workdir / f"mosquitto-{free_port()}"
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        self.plain_port = free_port()
        self.auth_port = free_port() if users else None
        self.tls_port = free_port() if tls else None
        self.tls = tls
        self.log_path = self.dir / "mosquitto.log"
        self._proc: subprocess.Popen | None = None
        persist = [f"persistence_location {self.dir}/", "autosave_interval 0"] if persistence else []
        lines = ["per_listener_settings true", f"persistence {'true' if persistence else 'false'}", *persist,
                 "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        lines += list(extra_config)
        if os.geteuid() == 0:
            lines.append("user root")
        lines += [f"listener {self.plain_port} 127.0.0.1", "allow_anonymous true"]
        if users:
            pwfile = self.dir / "passwd"
            pwfile.touch()
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pwfile), user, password], check=True,
                               capture_output=True, timeout=10)
            pwfile.chmod(0o644)
            lines += [f"listener {self.auth_port} 127.0.0.1", "allow_anonymous false", f"password_file {pwfile}"]
            if acl is not None:
                _write(self.dir / "acl", acl.encode())
                lines.append(f"acl_file {self.dir / 'acl'}")
        if tls:
            lines += [f"listener {self.tls_port} 127.0.0.1", "allow_anonymous true", f"cafile {tls.ca}",
                      f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                      f"require_certificate {'true' if require_client_cert else 'false'}"]
        self.conf = _write(self.dir / "mosquitto.conf", ("\n".join(lines) + "\n").encode())

    def start(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            raise RuntimeError("broker already running")
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.plain_port, self.auth_port, self.tls_port) if p]
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self._proc.returncode}):\n{self.log()}")
            if all(_listening(p) for p in ports):
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on {ports} within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- a subscriber that records what arrives


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Collector:
    """A paho subscriber (MQTT 5) recording every message; `wait_for` polls with a deadline.

    `persistent=True` keeps its session (and QoS 1 messages queued for it) across its own
    reconnects and, with a broker started with `persistence=True`, across broker restarts.
    `tls` connects with a client certificate.
    """

    def __init__(self, port: int, topics: list[str], *, username: str | None = None, password: str | None = None,
                 client_id: str | None = None, persistent: bool = False, tls: ClientCert | None = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"collector-{free_port()}",
                                   protocol=paho.MQTTv5)
        if username:
            self._client.username_pw_set(username, password)
        if tls is not None:  # mutual TLS: the broker may take user name and client id from the certificate
            self._client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
        self._topics = topics
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self._topics])
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 0.5)
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
        self._client.connect("127.0.0.1", port, keepalive=30, clean_start=not persistent, properties=props)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"collector could not subscribe on port {port}")

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
