"""The operator's side of fleet updates: sign and pack bundles, publish signed desired state, watch rollouts."""

from __future__ import annotations

import json
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from edge.bundle.store import BundleError, manifest_json, parse_manifest, read_bundle, sha256_file
from edge.fleet.archive import ArchiveError, pack_bundle, unpack
from edge.fleet.signing import SigningKey, manifest_signature, sign_document
from edge.publish.payloads import UpdateDesired, stamp
from edge.publish.topics import Topics, all_devices, device_of

DOWNGRADE_EXPIRY_S = 24 * 3600.0


def sign_bundle(bundle_dir: Path, key: SigningKey, out: Path, expires: datetime | None = None) -> tuple[str, int]:
    """Verify the bundle, optionally set its expiry, sign the manifest and write the transport .tar."""
    bundle = read_bundle(bundle_dir)
    manifest = bundle.manifest
    if expires is not None:
        manifest = Manifest.model_validate({**manifest.model_dump(), "expires": expires})
    raw = manifest_json(manifest) if expires is not None else (bundle_dir / MANIFEST_NAME).read_bytes()
    return pack_bundle(bundle_dir, list(manifest.files), raw, manifest_signature(key, raw), out)


def tar_manifest(tar_path: Path) -> Manifest:
    """The manifest of a signed bundle .tar, after unpacking and verifying all of it as a device will.

    A truncated or corrupt archive, a missing file or signature is refused here,
    on the operator's machine, instead of on every device.
    """
    try:
        size = tar_path.stat().st_size
    except OSError as exc:
        raise ValueError(f"{tar_path}: {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory(prefix=".affect-verify-") as work:
        out = Path(work) / "bundle"
        try:
            unpack(tar_path, out, max(size, 1))
        except ArchiveError as exc:
            raise ValueError(f"{tar_path}: {exc}; sign the bundle again") from None
        if not (out / SIGNATURE_NAME).is_file():
            raise ValueError(f"{tar_path}: no {SIGNATURE_NAME} in the archive (make it with `fleet sign`)")
        try:
            return read_bundle(out).manifest
        except BundleError as exc:
            raise ValueError(f"{tar_path}: {exc.where + ': ' if exc.where else ''}{exc.message}") from None


def _manifest_member(tar_path: Path) -> Manifest:
    """Only the manifest member, nothing else checked: for tests that build documents for hostile archives."""
    with tarfile.open(tar_path, "r:") as tar:
        handle = tar.extractfile(MANIFEST_NAME)
        if handle is None:
            raise ValueError(f"{tar_path}: {MANIFEST_NAME} is not a regular file")
        return parse_manifest(tar_path, handle.read())


def desired_document(tar_path: Path, url: str, target: str, key: SigningKey, *, allow_downgrade: bool = False,
                     expires_in_s: float | None = None, check_archive: bool = True) -> dict[str, Any]:
    """The signed desired-state document for `tar_path` served at `url`, validated before it is returned.

    A downgrade document always expires (default DOWNGRADE_EXPIRY_S): devices refuse one that does not.
    `check_archive=False` skips verifying the archive (the device-side tests sign documents for bad ones).
    """
    if allow_downgrade and expires_in_s is None:
        expires_in_s = DOWNGRADE_EXPIRY_S
    manifest = tar_manifest(tar_path) if check_archive else _manifest_member(tar_path)
    doc: dict[str, Any] = {
        **stamp(), "schema_version": 1, "target": target,
        "bundle": {"name": manifest.name, "version": manifest.version, "build": manifest.build},
        "url": url, "sha256": sha256_file(tar_path), "size": tar_path.stat().st_size,
        "allow_downgrade": allow_downgrade,
        "expires_ms": None if expires_in_s is None else int((time.time() + expires_in_s) * 1000),
    }
    signed = sign_document(key, doc)
    UpdateDesired.model_validate(signed)
    return signed


def target_topic(prefix: str, target: str) -> str:
    """The desired-state topic of `device:<id>` or `group:<name>` under `prefix`."""
    kind, _, name = target.partition(":")
    if kind == "device":
        return Topics(prefix, name).update_desired
    if kind == "group":
        return Topics(prefix, "operator").group_update_desired(name)
    raise ValueError(f"target {target!r} must be device:<id> or group:<name>")


@dataclass
class FleetView:
    """Latest retained update state and info of every device under a prefix, fed from MQTT messages."""

    prefix: str
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def subscriptions(self) -> list[str]:
        return [all_devices(self.prefix, "update/state"), all_devices(self.prefix, "info")]

    def feed(self, topic: str, payload: bytes) -> None:
        found = device_of(self.prefix, topic)
        if found is None or not payload:
            return
        device, kind = found
        try:
            data = json.loads(payload)
        except ValueError:
            return
        with self.changed:
            if kind == "update/state":
                self.states[device] = data
            elif kind == "info" and isinstance(data.get("group"), str):
                self.groups[device] = data["group"]
            self.changed.notify_all()

    def wait(self, done: Callable[[FleetView], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: done(self), timeout)

    def table(self, devices: Iterable[str] | None = None) -> str:
        header = ("DEVICE", "GROUP", "STATE", "CURRENT", "DESIRED", "REASON")
        rows = [header]
        with self.changed:
            for name in sorted(devices if devices is not None else set(self.states) | set(self.groups)):
                s = self.states.get(name, {})
                rows.append((name, self.groups.get(name, "-"), s.get("state", "-"), _ref(s.get("current")),
                             _ref(s.get("desired")), s.get("reason") or ""))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _ref(ref: dict[str, Any] | None) -> str:
    return "-" if not ref else f"{ref.get('name')} {ref.get('version')} (b{ref.get('build')})"


def reached(state: dict[str, Any] | None, build: int) -> str | None:
    """'active' once a device runs `build`; 'failed' if it refused or rolled back that build; else None."""
    if not state:
        return None
    desired = (state.get("desired") or {}).get("build")
    current = (state.get("current") or {}).get("build")
    if state.get("state") == "active" and current == build:
        return "active"
    if state.get("state") in ("failed", "rolled_back") and desired == build:
        return "failed"
    return None
