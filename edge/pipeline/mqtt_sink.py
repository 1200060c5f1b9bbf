"""The daemon's MQTT side: results (rate-limited), expression events, stats and retained info."""

from __future__ import annotations

from edge import __version__
from edge.config.models import SensorConfig
from edge.publish.client import MqttPublisher
from edge.publish.payloads import (
    BundleRef,
    ExpressionEvents,
    LatencyStats,
    ResultRecord,
    bundle_info,
    info_payload,
    stats_payload,
)

CAPABILITIES = ("results", "events", "stats", "hot_swap")


class MqttSink:
    def __init__(self, config: SensorConfig, device: str) -> None:
        self.device = device
        self.config = config
        self.publisher = MqttPublisher(config.mqtt, device, __version__)
        self.events = ExpressionEvents(device)
        self.publisher.start()

    def announce(self, manifest, backend: str) -> None:
        """Retained info: who this device is and which bundle it runs (again after every swap)."""
        info = bundle_info(manifest.name, manifest.version, manifest.build, manifest.label_space)
        extra = ["update"] if self.config.update.enabled else []
        self.publisher.set_info(info_payload(self.device, self.config.device.group, __version__, info, backend,
                                             [*CAPABILITIES, *extra], self.config.device.location))

    def write(self, record: ResultRecord, held: tuple[int, ...] = ()) -> None:
        self.publisher.publish_result(record)
        for event in self.events.update(record, held):
            self.publisher.publish_event(event)

    def publish_stats(self, snapshot: dict, bundle: BundleRef) -> None:
        latency = {stage: LatencyStats(**{k: v[k] for k in ("p50", "p95", "p99", "max")})
                   for stage, v in snapshot["latency_ms"].items()}
        self.publisher.publish_stats(stats_payload(
            self.device, snapshot["uptime_s"], snapshot["capture_fps"], snapshot["processed_fps"],
            snapshot["frames_dropped"], snapshot["faces"], latency, snapshot["temperature_c"],
            self.publisher.stats(), snapshot["cpu_percent"], snapshot["rss_mb"], snapshot["reconnects"], bundle,
            frame_errors=snapshot.get("frame_errors"), invalid_outputs=snapshot.get("invalid_outputs"),
            slot_evictions=snapshot.get("slot_evictions"), jetson=snapshot.get("jetson"),
        ))

    def close(self) -> None:
        self.publisher.stop()
