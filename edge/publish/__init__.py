"""MQTT publishing for dashboards: topic layout, typed payloads, the non-blocking publisher."""

from edge.publish.topics import Topics

__all__ = ["Topics"]
