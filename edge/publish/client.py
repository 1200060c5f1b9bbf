"""The device's MQTT publisher: paho-mqtt 2.x behind a queue, so publishing never blocks processing.

Threads: the caller (the capture loop) only enqueues; paho's network thread
only turns broker events into messages on the same queue; one publisher thread
owns everything else (rate limit, offline outbox, counters). QoS >= 1 messages
go through the bounded outbox (`edge.publish.buffer`) and leave it only when
the broker acknowledges them, so a broker outage loses nothing within the
bound; paho re-sends what was in flight when the connection dropped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config.models import MQTTConfig
from edge.publish.buffer import Outbox
from edge.publish.discovery import discovery_messages
from edge.publish.payloads import (
    EventPayload,
    InfoPayload,
    MqttStats,
    ResultRecord,
    StatsPayload,
    UpdateState,
    status_payload,
)
from edge.publish.ratelimit import TrailingRateLimiter
from edge.publish.topics import Topics

log = logging.getLogger(__name__)

RETAINED_QOS = 1  # status, info, update state, discovery: must arrive, and be there for late subscribers


class PublisherError(RuntimeError):
    """A configuration problem found before connecting (missing TLS file, unreadable secret)."""


@dataclass(frozen=True)
class _Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass(frozen=True)
class _Result:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class _Event:
    name: str  # connected, refused, disconnected, connect_failed, acked, info, probe, flush, stop
    args: tuple[Any, ...] = ()


def build_client(config: MQTTConfig, client_id: str) -> paho.Client:
    """A configured, unconnected paho client (TLS, credentials, protocol); shared with `affect-sensor listen`."""
    v5 = config.protocol == "5"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
    )
    if config.username:
        try:
            password = config.password.read() if config.password is not None else None
        except (FileNotFoundError, KeyError) as exc:
            raise PublisherError(f"mqtt.password: {str(exc).strip(chr(39))}") from None
        client.username_pw_set(config.username, password)
    tls = config.tls
    if tls.enabled:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is not None and not path.is_file():
                raise PublisherError(f"mqtt.tls.{key}: {path} is not a readable file")
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        context.check_hostname = tls.check_hostname
        if tls.cert_file is not None:
            try:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except ssl.SSLError as exc:
                raise PublisherError(f"mqtt.tls.cert_file/key_file: cannot load client certificate: {exc}") from None
        client.tls_set_context(context)
        client.tls_insecure_set(not tls.check_hostname)
    client.reconnect_delay_set(config.reconnect_initial_s, config.reconnect_max_s)
    return client


def connect_async(client: paho.Client, config: MQTTConfig) -> None:
    if config.protocol == "5":
        client.connect_async(config.host, config.port, config.keepalive_s, clean_start=True)
    else:
        client.connect_async(config.host, config.port, config.keepalive_s)


def _no_delay(client: paho.Client) -> None:
    """Small messages should not wait for Nagle's algorithm (dashboards want them now, not batched)."""
    sock = client.socket()
    with contextlib.suppress(AttributeError, OSError):  # websocket transports: not a plain TCP socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttPublisher:
    """Publishes one device's topics. `start()`, then the `publish_*` calls (never blocking), then `stop()`."""

    def __init__(self, config: MQTTConfig, device: str, software_version: str) -> None:
        self.config = config
        self.topics = Topics(config.prefix, device)
        self._software_version = software_version
        self._client = build_client(config, config.client_id or f"affect-{device}")
        self._client.max_inflight_messages_set(config.max_inflight)
        self._set_will()
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._outbox = Outbox(config.buffer_max_messages, config.buffer_max_bytes, config.buffer_dir)
        self._limiter: TrailingRateLimiter[_Result] = TrailingRateLimiter(config.results_max_hz)
        self._inbox: queue.SimpleQueue[_Msg | _Result | _Event] = queue.SimpleQueue()
        self._queued = 0  # caller messages in the inbox; guarded by _lock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._info: InfoPayload | None = None
        self._connected = threading.Event()
        self._idle = threading.Event()
        self._mids: dict[int, tuple[int | None, str]] = {}  # paho mid -> (outbox id or None, topic)
        self._counts = dict(published=0, acked=0, dropped_queue_full=0, dropped_offline=0, rejected=0, connects=0)
        self._last_error: str | None = None
        self._refused = False

    # ------------------------------------------------------------ caller side (any thread, non-blocking)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        connect_async(self._client, self.config)
        self._client.loop_start()

    def publish_result(self, record: ResultRecord) -> bool:
        """Queue a frame's result; rate-limited with the latest always sent. False: dropped (queue full)."""
        return self._put(_Result(self.topics.results, record.to_json()))

    def publish_event(self, event: EventPayload) -> bool:
        return self._put(_Msg(self.topics.events, event.to_json(), self.config.qos_events))

    def publish_stats(self, stats: StatsPayload) -> bool:
        return self._put(_Msg(self.topics.stats, stats.to_json(), self.config.qos_stats))

    def publish_update_state(self, state: UpdateState) -> bool:
        return self._put(_Msg(self.topics.update_state, state.to_json(), RETAINED_QOS, retain=True))

    def set_info(self, info: InfoPayload) -> None:
        """Publish the retained device info now and again on every reconnect."""
        self._inbox.put(_Event("info", (info,)))

    def stats(self) -> MqttStats:
        with self._lock:
            counts = dict(self._counts)
        return MqttStats(
            connected=self._connected.is_set(), buffered=len(self._outbox) + self._outbox.inflight,
            buffered_bytes=self._outbox.nbytes, dropped_buffer_full=self._outbox.dropped,
            rate_limited=self._limiter.superseded, last_error=self._last_error, **counts,
        )

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once every QoS >= 1 message so far (buffered, retained) has been acknowledged."""
        self._idle.clear()
        self._inbox.put(_Event("probe"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                return True
            self._inbox.put(_Event("probe"))
        return False

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Send the result the rate limit holds, drain for up to `drain_timeout`, send the retained `offline`
        status and disconnect. A held QoS 0 result that cannot be sent (broker away) counts as dropped_offline."""
        if self._thread is None:
            return
        self._inbox.put(_Event("flush"))  # queued behind every caller message, ahead of the drain probes
        if self._connected.is_set():
            self.wait_idle(drain_timeout)
        self._inbox.put(_Event("stop"))
        self._thread.join(timeout=drain_timeout + 5)
        if self._connected.is_set():
            info = self._client.publish(self.topics.status, status_payload(
                self.topics.device, "offline", "shutdown").to_json(), qos=RETAINED_QOS, retain=True)
            try:
                info.wait_for_publish(timeout=drain_timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not delivered: %s", exc)
            self._client.disconnect()
        self._client.loop_stop()
        self._outbox.close()
        self._thread = None

    def _put(self, item: _Msg | _Result) -> bool:
        with self._lock:
            if self._queued >= self.config.queue_max:
                self._counts["dropped_queue_full"] += 1
                return False
            self._queued += 1
        self._inbox.put(item)
        return True

    # ------------------------------------------------------------ paho network thread: events only

    def _set_will(self) -> None:
        will = status_payload(self.topics.device, "offline", "connection_lost").to_json()
        self._client.will_set(self.topics.status, will, qos=RETAINED_QOS, retain=True)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            self._inbox.put(_Event("refused", (str(reason),)))
        else:
            _no_delay(client)
            self._connected.set()
            self._inbox.put(_Event("connected"))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        exc = sys.exc_info()[1]  # paho calls this inside its `except OSError` block
        self._inbox.put(_Event("connect_failed", (f"{type(exc).__name__}: {exc}" if exc else "unknown error",)))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Properties | None) -> None:
        self._connected.clear()
        self._set_will()  # re-stamped so the next session's Last Will carries a fresh time
        self._inbox.put(_Event("disconnected", (str(reason),)))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        self._inbox.put(_Event("acked", (mid, reason)))

    # ------------------------------------------------------------ publisher thread: owns outbox and limiter

    def _error(self, message: str) -> None:
        if message != self._last_error:
            log.warning("mqtt %s:%d: %s", self.config.host, self.config.port, message)
        self._last_error = message

    def _run(self) -> None:
        while True:
            due = self._limiter.next_due()
            timeout = 0.5 if due is None else max(0.0, min(0.5, due - time.monotonic()))
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if isinstance(item, _Event) and item.name == "stop":
                return
            if item is not None:
                self._handle(item)
            held = self._limiter.due(time.monotonic())
            if held is not None:
                self._send_result(held)
            self._drain()

    def _handle(self, item: _Msg | _Result | _Event) -> None:
        if isinstance(item, (_Msg, _Result)):
            with self._lock:
                self._queued -= 1
        if isinstance(item, _Result):
            ready = self._limiter.offer(item, time.monotonic())
            if ready is not None:
                self._send_result(ready)
        elif isinstance(item, _Msg):
            self._send(item)
        elif item.name == "connected":
            with self._lock:
                self._counts["connects"] += 1
            self._last_error, self._refused = None, False
            self._announce()
        elif item.name == "refused":
            self._refused = True
            self._error(f"broker refused the connection: {item.args[0]}")
        elif item.name == "connect_failed":
            self._error(f"cannot connect: {item.args[0]}")
        elif item.name == "disconnected" and not self._refused:  # keep the refusal: it says why
            self._error(f"connection lost: {item.args[0]}")
        elif item.name == "acked":
            self._acked(*item.args)
        elif item.name == "info":
            self._info = item.args[0]
            if self._connected.is_set():
                self._direct(self.topics.info, self._info.to_json(), RETAINED_QOS, True)
        elif item.name == "flush":
            held = self._limiter.flush()
            if held is not None:
                self._send_result(held)
        elif item.name == "probe" and not len(self._outbox) and not self._mids:
            self._idle.set()

    def _announce(self) -> None:
        """On every connect: retained online status, info and discovery configs."""
        online = status_payload(self.topics.device, "online", "connected").to_json()
        self._direct(self.topics.status, online, RETAINED_QOS, True)
        if self._info is not None:
            self._direct(self.topics.info, self._info.to_json(), RETAINED_QOS, True)
        if self.config.discovery_prefix:
            for msg in discovery_messages(self.config.discovery_prefix, self.topics, self._software_version,
                                          self._info.location if self._info else ""):
                self._direct(msg.topic, msg.payload, RETAINED_QOS, True)

    def _send_result(self, item: _Result) -> None:
        self._send(_Msg(item.topic, item.payload, self.config.qos_results))

    def _send(self, msg: _Msg) -> None:
        if msg.qos == 0:
            if self._connected.is_set():
                self._direct(msg.topic, msg.payload, 0, msg.retain)
            else:
                with self._lock:
                    self._counts["dropped_offline"] += 1
            return
        self._outbox.add(msg.topic, msg.payload, msg.qos, msg.retain)

    def _direct(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            self._mids[info.mid] = (None, topic)
        self._count_publish(info.rc)

    def _count_publish(self, rc: MQTTErrorCode) -> None:
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            with self._lock:
                self._counts["published"] += 1
        elif rc != MQTTErrorCode.MQTT_ERR_NO_CONN:  # NO_CONN with QoS >= 1: paho sends it after reconnecting
            self._error(f"publish failed: {paho.error_string(rc)}")

    def _drain(self) -> None:
        if not self._connected.is_set():
            return
        for queued in self._outbox.take(self.config.max_inflight - self._outbox.inflight):
            info = self._client.publish(queued.topic, queued.payload, qos=queued.qos, retain=queued.retain)
            self._mids[info.mid] = (queued.id, queued.topic)
            self._count_publish(info.rc)

    def _acked(self, mid: int, reason: ReasonCode) -> None:
        row_id, topic = self._mids.pop(mid, (None, ""))
        if row_id is not None:
            self._outbox.acked(row_id)
        with self._lock:
            self._counts["acked"] += 1
            if reason.is_failure:
                self._counts["rejected"] += 1
        if reason.is_failure:
            self._error(f"broker refused publish to {topic}: {reason} (MQTT 5 reason code {reason.value:#04x})")
