"""The device's bundle store: versioned directories, an atomic `current` link, and the agent's journal.

    bundles_dir/
      affect-default-0.1.0-b1/      complete, verified bundles (never modified once here)
      affect-default-0.2.0-b2/
      current -> affect-default-0.2.0-b2    what the daemon runs
      previous -> affect-default-0.1.0-b1   where a rollback goes
      agent.json                    the agent's journal (trial in progress, refused documents)
      .staging/                     downloads (.part, resumable) and unpack directories

A directory enters the store only by `rename` of a fully written, fsynced,
verified tree, and `current` changes only by `rename` of a new symlink over
it, so a power cut at any instant leaves `current` naming a complete bundle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.bundle.manifest import SIGNATURE_NAME, Manifest
from edge.bundle.store import Bundle, BundleError, read_bundle
from edge.fsutil import atomic_write, fsync_dir

CURRENT, PREVIOUS, JOURNAL, STAGING, LOCK = "current", "previous", "agent.json", ".staging", ".lock"
MAX_REMEMBERED_FAILURES = 32


class Trial(BaseModel):
    """A switch not yet confirmed healthy: on restart the agent re-checks it or rolls back."""

    model_config = ConfigDict(extra="forbid")
    candidate: str
    previous: str | None
    document: str = Field(description="id of the desired document that asked for it")


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str
    message: str
    state: str = "failed"


class Journal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trial: Trial | None = None
    refused: dict[str, Refusal] = Field(default_factory=dict, description="document id -> why it was refused")


def dir_name(manifest: Manifest) -> str:
    return f"{manifest.name}-{manifest.version}-b{manifest.build}"


class BundleStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def staging(self) -> Path:
        return self.root / STAGING

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise store maintenance between the daemon and the agent (both may seed on first start)."""
        self.prepare()
        with (self.root / LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------ links

    def _link(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        if "/" in target or target in ("", ".", ".."):
            raise BundleError(link, "", f"link points outside the store ({target!r})")
        return self.root / target

    def current_dir(self) -> Path | None:
        return self._link(CURRENT)

    def previous_dir(self) -> Path | None:
        return self._link(PREVIOUS)

    def current(self) -> Bundle | None:
        path = self.current_dir()
        return None if path is None else read_bundle(path)

    def _point(self, name: str, target: Path) -> None:
        if target.parent != self.root:
            raise ValueError(f"{target} is not a directory of the store {self.root}")
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target.name, tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def switch(self, target: Path) -> Path | None:
        """Make `target` current; the old current becomes `previous`. Returns the old current."""
        old = self.current_dir()
        if old is not None and old != target:
            self._point(PREVIOUS, old)
        self._point(CURRENT, target)
        return old

    def rollback_to(self, target: Path) -> None:
        self._point(CURRENT, target)

    # ------------------------------------------------------------ directories

    def install(self, staged: Path, manifest: Manifest) -> Path:
        """Move a verified, staged tree into the store under its versioned name (idempotent)."""
        final = self.root / dir_name(manifest)
        if final.exists():
            try:
                existing = read_bundle(final)
                if existing.manifest == manifest:
                    shutil.rmtree(staged, ignore_errors=True)
                    return final
            except BundleError:
                pass
            if final in (self.current_dir(), self.previous_dir()):
                raise BundleError(final, "", "a different bundle with this name, version and build is in use")
            shutil.rmtree(final)
        os.rename(staged, final)
        fsync_dir(self.root)
        return final

    def seed(self, bundle: Bundle) -> Path:
        """First start: copy `bundle` (e.g. the built-in default) into the store and make it current."""
        with self.locked():
            current = self.current_dir()
            return current if current is not None else self._seed(bundle)

    def _seed(self, bundle: Bundle) -> Path:
        staged = self.staging / f"seed-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        names = [*bundle.manifest.files, "manifest.json"]
        if (bundle.path / SIGNATURE_NAME).is_file():
            names.append(SIGNATURE_NAME)
        for name in names:
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.path / name, staged / name)
        read_bundle(staged)
        final = self.install(staged, bundle.manifest)
        self._point(CURRENT, final)
        return final

    def installed(self) -> list[Bundle]:
        out = []
        for path in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if path.is_dir() and not path.is_symlink() and not path.name.startswith("."):
                with contextlib.suppress(BundleError):
                    out.append(read_bundle(path, verify_hashes=False))
        return out

    def gc(self, keep: int) -> list[Path]:
        """Remove all but the `keep` newest bundles (by build); never current or previous. Clears staging."""
        pinned = {self.current_dir(), self.previous_dir()}
        bundles = sorted(self.installed(), key=lambda b: b.manifest.build, reverse=True)
        removed = []
        for b in bundles[keep:]:
            if b.path not in pinned:
                shutil.rmtree(b.path, ignore_errors=True)
                removed.append(b.path)
        return removed

    def clear_staging(self, keep: Iterable[str] = ()) -> None:
        with self.locked():
            for path in self.staging.iterdir():
                if path.name not in set(keep):
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    # ------------------------------------------------------------ journal

    def journal(self) -> Journal:
        path = self.root / JOURNAL
        if not path.is_file():
            return Journal()
        try:
            return Journal.model_validate(json.loads(path.read_bytes()))
        except (ValueError, ValidationError):
            return Journal()  # written atomically, so only a hand edit gets here; start clean

    def write_journal(self, journal: Journal) -> None:
        if len(journal.refused) > MAX_REMEMBERED_FAILURES:
            journal.refused = dict(list(journal.refused.items())[-MAX_REMEMBERED_FAILURES:])
        atomic_write(self.root / JOURNAL, journal.model_dump_json(indent=2).encode())
