"""The device's bundle store: versioned directories, an atomic `current` link, and the agent's journal.

    bundles_dir/
      affect-default-0.1.0-b1/      complete, verified bundles (never modified once here)
      affect-default-0.2.0-b2/
      current -> affect-default-0.2.0-b2    what the daemon runs
      previous -> affect-default-0.1.0-b1   where a rollback goes
      agent.json                    the agent's journal (trial in progress, refused documents, replay state)
      .staging/                     downloads (.part, resumable), unpack directories, temp links, trash

A directory enters the store only by `rename` of a fully written, fsynced,
verified tree, and `current` changes only by `rename` of a new symlink over
it, so a power cut at any instant leaves `current` naming a complete bundle.
Anything half-done (a temp link, a directory being deleted) lives in
`.staging/`, which the agent clears at start.
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
MAX_REMEMBERED_TARGETS = 16


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


class Seen(BaseModel):
    """A signed desired document the agent acted on: what replay protection compares new documents with."""

    model_config = ConfigDict(extra="forbid")
    document: str = Field(description="document id (hash of its signature)")
    target: str
    ts_ms: int = Field(description="issue time, the operator's clock")
    build: int | None = None


class Journal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trial: Trial | None = None
    refused: dict[str, Refusal] = Field(default_factory=dict, description="document id -> why it was refused")
    newest: dict[str, Seen] = Field(default_factory=dict, description="target -> newest document acted on")
    applied: Seen | None = Field(default=None, description="the document acted on last, of any target")


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
        """Make link `name` point at `target` with one rename; the temp link is made in staging."""
        if target.parent != self.root:
            raise ValueError(f"{target} is not a directory of the store {self.root}")
        self.staging.mkdir(exist_ok=True)
        tmp = self.staging / f"link-{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target.name, tmp)  # relative: resolves against the directory it is renamed into
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
        """`current` back to `target`; `previous` is dropped when it names the same bundle (no rollback left)."""
        self._point(CURRENT, target)
        if self.previous_dir() == target:
            (self.root / PREVIOUS).unlink()
            fsync_dir(self.root)

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
                self._remove(b.path)
                removed.append(b.path)
        self.clear_staging()
        return removed

    def discard(self, path: Path) -> bool:
        """Remove a bundle that failed its checks or was rolled back, unless `current` or `previous` name it."""
        if path.parent != self.root or not path.is_dir() or path in (self.current_dir(), self.previous_dir()):
            return False
        self._remove(path)
        return True

    def _remove(self, path: Path) -> None:
        # One rename takes it out of the store; a kill during the slow delete leaves only staging debris.
        trash = self.staging / f"trash-{path.name}.{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def clear_staging(self, keep: Iterable[str] = ()) -> None:
        keep = set(keep)
        with self.locked():
            for path in self.staging.iterdir():
                if path.name not in keep:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            for stale in self.root.glob(".*.*.tmp"):  # temp links of older versions, made beside the links
                if stale.is_symlink():
                    stale.unlink()

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
        if len(journal.newest) > MAX_REMEMBERED_TARGETS:  # a device has two targets; more only after regrouping
            keep = sorted(journal.newest.items(), key=lambda item: item[1].ts_ms)[-MAX_REMEMBERED_TARGETS:]
            journal.newest = dict(keep)
        atomic_write(self.root / JOURNAL, journal.model_dump_json(indent=2).encode())
