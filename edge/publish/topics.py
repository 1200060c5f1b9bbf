"""The MQTT topic layout (docs/mqtt.md). One place builds every topic so the layout stays versioned."""

from __future__ import annotations

from dataclasses import dataclass

TOPIC_KINDS = ("status", "info", "results", "events", "stats", "update/desired", "update/state")


def _check_level(value: str, what: str) -> str:
    if not value or any(ch in value for ch in "#+/\x00"):
        raise ValueError(f"{what} {value!r} must be non-empty and free of '/', '#', '+'")
    return value


@dataclass(frozen=True)
class Topics:
    """Topics of one device: `<prefix>/<device>/<kind>`; group update topics hang off the prefix."""

    prefix: str
    device: str

    def __post_init__(self) -> None:
        for level in self.prefix.split("/"):
            _check_level(level, "topic prefix level")
        _check_level(self.device, "device id")
        if self.device == "groups":
            raise ValueError("device id 'groups' is reserved for group update topics")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def results(self) -> str:
        return f"{self.base}/results"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def update_desired(self) -> str:
        return f"{self.base}/update/desired"

    @property
    def update_state(self) -> str:
        return f"{self.base}/update/state"

    def group_update_desired(self, group: str) -> str:
        return f"{self.prefix}/groups/{_check_level(group, 'group')}/update/desired"


def all_devices(prefix: str, kind: str) -> str:
    """Subscription filter for one topic kind across every device under a prefix."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}; known: {list(TOPIC_KINDS)}")
    return f"{prefix}/+/{kind}"


def device_of(prefix: str, topic: str) -> tuple[str, str] | None:
    """(device, kind) for a device topic under `prefix`, None for anything else (groups, other prefixes)."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    device, _, kind = topic[len(head):].partition("/")
    if not device or device == "groups" or kind not in TOPIC_KINDS:
        return None
    return device, kind
