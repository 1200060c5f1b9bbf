"""Write and read bundle directories. Writes are atomic; reads verify everything.

A reader that trusts a manifest is how a half-copied or tampered bundle ends up
running on a device, so `read_bundle` re-hashes every file, refuses files the
manifest does not list, and refuses links and special files outright.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.bundle.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    UNLISTED_ALLOWED,
    FileEntry,
    Manifest,
    check_relative_name,
)
from edge.fsutil import fsync_dir


class BundleError(ValueError):
    """A bundle that must not be used, with the file (and field) that is wrong."""

    def __init__(self, bundle: Path | str, where: str, message: str) -> None:
        self.bundle, self.where, self.message = str(bundle), where, message
        super().__init__(f"bundle {bundle}: {where}: {message}" if where else f"bundle {bundle}: {message}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(self.path, name, "not listed in the manifest")
        return self.path / name

    def role(self, role: str) -> Path | None:
        name = self.manifest.file_for(role)
        return None if name is None else self.path / name


def manifest_error(path: Path, exc: ValidationError) -> BundleError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return BundleError(path, f"{MANIFEST_NAME}: {loc}" if loc else MANIFEST_NAME, first["msg"])


def parse_manifest(path: Path, raw: bytes) -> Manifest:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, MANIFEST_NAME, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(path, MANIFEST_NAME, "top level must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            path, f"{MANIFEST_NAME}: schema_version",
            f"unsupported schema version {version!r}; this software reads version {SCHEMA_VERSION}",
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise manifest_error(path, exc) from None


def read_bundle(path: Path | str, *, verify_hashes: bool = True) -> Bundle:
    """Open and verify a bundle directory; raise BundleError naming the first problem."""
    root = Path(path)
    if root.is_symlink() or not root.is_dir():
        raise BundleError(root, "", "not a directory")
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise BundleError(root, MANIFEST_NAME, "missing (or not a regular file)")
    manifest = parse_manifest(root, manifest_path.read_bytes())

    present: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(root, rel, "symbolic links are not allowed in a bundle")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(root, rel, "not a regular file")
            present.add(rel)
    unlisted = sorted(present - set(manifest.files) - UNLISTED_ALLOWED)
    if unlisted:
        raise BundleError(root, unlisted[0], "file is not listed in the manifest")
    for name, entry in manifest.files.items():
        where = f"{MANIFEST_NAME}: files.{name}"
        if name not in present:
            raise BundleError(root, where, "listed file is missing")
        size = (root / name).stat().st_size
        if size != entry.size:
            raise BundleError(root, where, f"size is {size} bytes, manifest says {entry.size}")
        if verify_hashes and sha256_file(root / name) != entry.sha256:
            raise BundleError(root, where, "sha256 does not match the manifest (file changed or corrupt)")
    return Bundle(root, manifest)


def write_bundle(
    dest: Path | str,
    manifest_fields: dict[str, Any],
    files: dict[str, tuple[Path | bytes, str]],
    *,
    overwrite: bool = False,
) -> Bundle:
    """Write a bundle atomically: build it in a sibling temp dir, fsync, then rename into place.

    `files` maps bundle-relative name -> (source path or bytes, role). `manifest_fields`
    holds everything else of the manifest except `files`, `schema_version` and, if
    absent, `created`.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise BundleError(dest, "", "already exists (pass overwrite=True to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the daemon's user must be able to read a bundle
    try:
        entries: dict[str, FileEntry] = {}
        for name, (source, role) in files.items():
            try:
                check_relative_name(name)
            except ValueError as exc:
                raise BundleError(dest, name, str(exc)) from None
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            _write_synced(target, data)
            entries[name] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data), role=role)
        fields = {"created": datetime.now(timezone.utc).isoformat(), **manifest_fields}
        fields.update(schema_version=SCHEMA_VERSION, files={k: v.model_dump() for k, v in entries.items()})
        try:
            manifest = Manifest.model_validate(fields)
        except ValidationError as exc:
            raise manifest_error(dest, exc) from None
        _write_synced(tmp / MANIFEST_NAME, manifest_json(manifest))
        for sub in {p.parent for p in tmp.rglob("*") if p.is_file()}:
            fsync_dir(sub)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(dest, manifest)


def rebuild_bundle(src: Path | str, dest: Path | str, *, replace: dict[str, bytes] | None = None,
                   **fields: Any) -> Bundle:
    """A new bundle from a verified one: some manifest fields changed, some files replaced, all re-hashed."""
    source = read_bundle(src)
    manifest = source.manifest.model_dump(mode="json", exclude_none=True)
    for key in ("files", "schema_version", "created"):
        manifest.pop(key)
    manifest.update(fields)
    files: dict[str, tuple[Path | bytes, str]] = {
        name: ((replace or {}).get(name, source.path / name), entry.role)
        for name, entry in source.manifest.files.items()}
    return write_bundle(dest, manifest, files)


def manifest_json(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n").encode()


def replace_dir(src: Path, dest: Path) -> None:
    """Move a finished directory into place; an existing `dest` is swapped out, then removed."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    os.rename(src, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
