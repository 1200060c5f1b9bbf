"""SIGHUP: which config sections changed, which the daemon applies live, which need a restart.

Live: [model] and [head] (a model-runtime swap), [detection] (the front end is
rebuilt: tracks restart), [sinks] (reopened), [stats], [daemon], and the
[update] keys only the update agent reads. Restart: [device] and [mqtt] (the
broker session and topics), [source] (the capture thread), and the [update]
keys the daemon itself follows (enabled, bundles_dir, health_file).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config.models import SensorConfig

LIVE_SECTIONS = ("model", "head", "detection", "sinks", "stats", "daemon")
RESTART_SECTIONS = ("device", "source", "mqtt")
DAEMON_UPDATE_KEYS = ("enabled", "bundles_dir", "health_file")


@dataclass(frozen=True)
class ConfigDiff:
    live: tuple[str, ...]
    restart: tuple[str, ...]


def diff_sections(running: SensorConfig, new: SensorConfig) -> ConfigDiff:
    live, restart = [], []
    for name in SensorConfig.model_fields:
        old_section, new_section = getattr(running, name), getattr(new, name)
        if old_section == new_section:
            continue
        if name == "update":
            daemon_keys = any(getattr(old_section, k) != getattr(new_section, k) for k in DAEMON_UPDATE_KEYS)
            (restart if daemon_keys else live).append(name)
        elif name in RESTART_SECTIONS:
            restart.append(name)
        else:
            live.append(name)
    return ConfigDiff(tuple(live), tuple(restart))


def merge(running: SensorConfig, new: SensorConfig, sections: tuple[str, ...] | set[str]) -> SensorConfig:
    """`running` with `sections` taken from `new`, validated as a whole (limits across sections still agree)."""
    data = running.model_dump()
    for name in sections:
        data[name] = getattr(new, name).model_dump()
    return SensorConfig.model_validate(data)
