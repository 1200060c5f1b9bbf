"""Home Assistant MQTT discovery: retained config messages that make a device appear on its own.

See https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery. Every
entity reads the device's normal topics through a value template, so
discovery adds no topics and no extra traffic beyond these retained configs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edge.publish.topics import Topics


@dataclass(frozen=True)
class DiscoveryMessage:
    topic: str
    payload: bytes


def _node_id(device: str) -> str:
    return "affect_" + re.sub(r"[^A-Za-z0-9_-]", "_", device)


def entity_slug(text: str) -> str:
    """What Home Assistant accepts after the dot of an entity id: lower case, digits, single underscores."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", text.lower())).strip("_")


def discovery_messages(
    discovery_prefix: str, topics: Topics, software_version: str, location: str = ""
) -> list[DiscoveryMessage]:
    node = _node_id(topics.device)
    device = {
        "identifiers": [node],
        "name": f"Affect sensor {topics.device}",
        "manufacturer": "affect-sensor",
        "model": "edge affect sensor",
        "sw_version": software_version,
    }
    if location:
        device["suggested_area"] = location
    availability = {
        "availability_topic": topics.status,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    entities = [
        ("sensor", "top_expression", {
            "name": "Top expression", "state_topic": topics.results, "icon": "mdi:emoticon-outline",
            "value_template": "{{ value_json.faces[0].top_expression if value_json.faces else 'none' }}",
        }),
        ("sensor", "face_count", {
            "name": "Faces", "state_topic": topics.results, "state_class": "measurement", "icon": "mdi:account-group",
            "value_template": "{{ value_json.faces | length }}",
        }),
        ("sensor", "processed_fps", {
            "name": "Processed FPS", "state_topic": topics.stats, "state_class": "measurement",
            "unit_of_measurement": "fps", "value_template": "{{ value_json.processed_fps }}",
            "entity_category": "diagnostic",
        }),
        ("sensor", "bundle_version", {
            "name": "Model bundle version", "state_topic": topics.info, "entity_category": "diagnostic",
            "value_template": "{{ value_json.bundle.version if value_json.bundle else 'none' }}",
        }),
        ("binary_sensor", "online", {
            "name": "Online", "state_topic": topics.status, "device_class": "connectivity",
            "value_template": "{{ value_json.state }}", "payload_on": "online", "payload_off": "offline",
            "entity_category": "diagnostic",
        }),
    ]
    messages = []
    for component, object_id, config in entities:
        # default_entity_id (HA 2025.10+) replaces object_id, which HA stops honouring in 2026.4.
        body = {**config, "unique_id": f"{node}_{object_id}",
                "default_entity_id": f"{component}.{entity_slug(f'{node}_{object_id}')}", "device": device}
        if component != "binary_sensor":
            body.update(availability)
        messages.append(DiscoveryMessage(
            f"{discovery_prefix}/{component}/{node}/{object_id}/config",
            json.dumps(body, sort_keys=True).encode("utf-8"),
        ))
    return messages
