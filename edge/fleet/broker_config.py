"""The fleet broker layout, per device, as mosquitto config text (firmware_cfg/mosquitto/).

A device's bridge must forward exactly the topics the device publishes about
itself and bring down exactly its desired documents; the central ACL must
grant that device exactly the same topics, by name, with no pattern that
also reaches dashboard or operator identities. Both are derived here from the
one topic layout (`edge.publish.topics`), so the shipped examples, the
generated blocks for a real inventory and the tests cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.publish.discovery import discovery_messages
from edge.publish.topics import Topics

# What a device publishes about itself: bridged up, and writable by that device only.
DEVICE_OUT = ("status", "info", "results", "events", "stats", "update/state")
BRIDGE_STATE = "bridge/state"  # written on central by the bridge itself (notification and Last Will)


@dataclass(frozen=True)
class DeviceTopics:
    prefix: str
    device: str
    group: str
    discovery_prefix: str | None = "homeassistant"

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix, self.device)

    def own(self) -> list[str]:
        """The device's own topics it publishes."""
        return [f"{self.topics.base}/{kind}" for kind in DEVICE_OUT]

    def discovery(self) -> list[str]:
        """Its Home Assistant discovery configs, one filter per component."""
        if not self.discovery_prefix:
            return []
        configs = discovery_messages(self.discovery_prefix, self.topics, "")
        return sorted({m.topic.rsplit("/", 2)[0] + "/+/config" for m in configs}, reverse=True)

    def uplink(self) -> list[str]:
        """Topics the bridge forwards to central (QoS 1)."""
        return [*self.own(), *self.discovery()]

    def downlink(self) -> list[str]:
        """Desired documents central sends down: the device's and its group's."""
        return [self.topics.update_desired, self.topics.group_update_desired(self.group)]

    def bridge_state(self) -> str:
        return f"{self.topics.base}/{BRIDGE_STATE}"


def bridge_topic_lines(d: DeviceTopics) -> str:
    lines = [f"topic {t} out 1" for t in d.uplink()] + [f"topic {t} in 1" for t in d.downlink()]
    return "\n".join(lines) + "\n"


def acl_block(d: DeviceTopics) -> str:
    """The device's block of central-acl.conf: write what it bridges up, read what it bridges down."""
    lines = [f"user {d.device}"]
    lines += [f"topic write {t}" for t in [*d.own(), d.bridge_state(), *d.discovery()]]
    lines += [f"topic read {t}" for t in d.downlink()]
    return "\n".join(lines) + "\n"
