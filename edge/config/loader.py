"""Load the device TOML into `SensorConfig`, with errors that name file, key and expectation."""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edge.config.models import SecretRef, SensorConfig
from edge.redact import redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem, located as precisely as we can: file, key path, what was expected."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def _secret_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths whose value is a SecretRef (e.g. ("mqtt", "password")), found from the model types."""
    found: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        for kind in typing.get_args(field.annotation) or (field.annotation,):
            if kind is SecretRef:
                found.add((*prefix, name))
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                found |= _secret_keys(kind, (*prefix, name))
    return found


SECRET_KEYS = _secret_keys(SensorConfig)


def _explain(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (not a setting; check the spelling against firmware_cfg/sensor.toml)"
    if kind == "missing":
        return "required key is missing"
    loc = tuple(str(part) for part in error["loc"])
    if any(loc[: len(key)] == key for key in SECRET_KEYS):  # never echo what may be the secret itself
        if not isinstance(error.get("input"), dict):
            return ('a secret is never a literal value: give { file = "/path" } or { env = "VARIABLE" } '
                    "(the value given is not shown)")
        return f"{error['msg']} (the value given is not shown)"
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f", got {got!r}"
    return f"{error['msg']}{got_text}"


def parse_config(data: dict[str, Any], source: str = "<config>") -> SensorConfig:
    try:
        return SensorConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(source, _key_path(first["loc"]), _explain(first) + suffix) from None


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply `section.key=value` overrides; the value is parsed as a TOML value (bare words as strings)."""
    merged = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(source, item, "expected KEY=VALUE, e.g. source.uri=\"v4l2:/dev/video0\"")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = merged
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(source, key, f"{part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read config file: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"malformed TOML: {exc}") from None


def check_secrets(config: SensorConfig, source: str) -> None:
    """Resolve every secret once so a missing file or variable fails at start, not at first connect."""
    for key, ref in iter_secrets(config):
        try:
            ref.read()
        except (FileNotFoundError, KeyError) as exc:
            raise ConfigError(source, key, str(exc).strip("'\"")) from None


def iter_secrets(model: BaseModel, prefix: str = "") -> list[tuple[str, SecretRef]]:
    found: list[tuple[str, SecretRef]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, SecretRef):
            found.append((key, value))
        elif isinstance(value, BaseModel):
            found.extend(iter_secrets(value, key + "."))
    return found


def load_config(
    path: Path | None, overrides: list[str] | None = None, *, resolve_secrets: bool = True
) -> SensorConfig:
    """Load a config file (or the built-in defaults when `path` is None) plus overrides."""
    source = str(path) if path is not None else "<defaults>"
    data = read_toml(path) if path is not None else {}
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + --set"
    config = parse_config(data, source)
    if resolve_secrets:
        check_secrets(config, source)
    return config


def effective_config(config: SensorConfig) -> dict[str, Any]:
    """The config as plain data for display, every secret replaced by where it comes from."""
    data = config.model_dump(mode="json", exclude_none=True)
    data["source"]["uri"] = redact_url(config.source.uri)  # rtsp://user:password@camera
    for key, ref in iter_secrets(config):
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = f"****** ({ref.describe()})"
    return data
