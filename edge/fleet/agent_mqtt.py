"""The update agent on MQTT: subscribe to the device's and its group's desired topics, publish state, retained.

paho's network thread only queues messages; the agent's own thread does the
slow work (downloads, self-tests, health windows) one document at a time, so a
burst of retained documents never runs two updates at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from edge.config.models import SensorConfig
from edge.fleet.agent import TRANSIENT, UpdateAgent, document_id
from edge.publish.client import RETAINED_QOS, build_client, connect_async
from edge.publish.payloads import UpdateState
from edge.publish.topics import Topics

log = logging.getLogger("affect-sensor.update")
RETRY_TRANSIENT_S = 30.0  # first retry of a transient failure; doubled per retry of the same document
RETRY_MAX_S = 1800.0


class _Retry:
    """When to retry a document whose last attempt failed for a transient reason (download, no frames)."""

    def __init__(self) -> None:
        self.document: str | None = None
        self.count = 0

    def due(self, agent: UpdateAgent) -> bool:
        last, doc = agent.last_state, agent.newest_doc()
        if last is None or doc is None or last.state not in ("failed", "rolled_back") or last.reason not in TRANSIENT:
            return False
        if document_id(doc) != self.document:
            self.document, self.count = document_id(doc), 0
        if time.time() - last.ts_ms / 1000 < min(RETRY_TRANSIENT_S * 2**self.count, RETRY_MAX_S):
            return False
        self.count += 1
        return True


def run_agent(config: SensorConfig, device: str, stop: threading.Event) -> int:
    topics = Topics(config.mqtt.prefix, device)
    wanted = [topics.update_desired, topics.group_update_desired(config.device.group)]
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    client = build_client(config.mqtt, f"affect-{device}-update")

    def publish(state: UpdateState) -> None:
        client.publish(topics.update_state, state.to_json(), qos=RETAINED_QOS, retain=True)

    def on_connect(c, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        c.subscribe([(t, 1) for t in wanted])
        if agent.last_state is not None:  # re-assert the retained state after a reconnect
            publish(agent.last_state)

    client.on_connect = on_connect
    client.on_message = lambda c, u, msg: inbox.put((msg.topic, bytes(msg.payload)))
    agent = UpdateAgent(config, device, publish)
    agent.start()
    connect_async(client, config.mqtt)
    client.loop_start()
    log.info("update agent for %s: watching %s", device, ", ".join(wanted))
    retry = _Retry()
    try:
        while not stop.is_set():
            try:
                topic, payload = inbox.get(timeout=0.5)
            except queue.Empty:
                if retry.due(agent):
                    agent.apply_newest()
                continue
            agent.handle(topic, payload)
    finally:
        client.disconnect()
        client.loop_stop()
    return 0
