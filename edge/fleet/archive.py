"""Bundle transport: a plain `.tar` with the bundle's files at its root, and a paranoid unpacker.

The unpacker does not call `tarfile.extractall`: it walks the members, refuses
anything but regular files and directories (links, devices and FIFOs are how a
tar escapes its directory or plants a surprise), refuses absolute paths and
`..`, caps the member count and the unpacked size, and writes each file itself
into a fresh directory. The bundle reader then re-hashes everything.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath

from edge.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from edge.bundle.store import sha256_file
from edge.fsutil import atomic_writer, fsync_dir

MAX_MEMBERS = 256
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive that must not be unpacked; the message names the member."""

    code = "unsafe_archive"


def pack_bundle(bundle_dir: Path, files: list[str], manifest: bytes, signature: bytes, dest: Path) -> tuple[str, int]:
    """Write `dest` atomically: manifest, signature, then `files` (bundle-relative); return (sha256, size)."""
    with atomic_writer(dest) as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST_NAME, manifest), (SIGNATURE_NAME, signature)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = (bundle_dir / name).stat().st_size, 0o644, 0
            with (bundle_dir / name).open("rb") as source:
                tar.addfile(info, source)
    return sha256_file(dest), dest.stat().st_size


def _safe_name(member: tarfile.TarInfo) -> PurePosixPath:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute():
        raise ArchiveError(f"member {name!r}: absolute path")
    if any(part == ".." for part in path.parts):
        raise ArchiveError(f"member {name!r}: '..' in path")
    if "\\" in name or "\x00" in name:
        raise ArchiveError(f"member {name!r}: odd characters in path")
    return PurePosixPath(*[p for p in path.parts if p != "."])


def unpack(tar_path: Path, dest: Path, max_bytes: int) -> None:
    """Unpack into `dest` (must not exist). On any error `dest` may hold a partial tree: the caller discards it."""
    dest.mkdir(parents=False, exist_ok=False)
    total = 0
    seen: set[PurePosixPath] = set()
    files: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = set()
    try:
        tar = tarfile.open(tar_path, "r:")  # noqa: SIM115 (closed by the `with` below; open errors differ)
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{tar_path.name}: not a readable tar ({exc})") from None
    with tar:
        try:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"more than {MAX_MEMBERS} members")
                rel = _safe_name(member)
                if member.issym() or member.islnk():
                    raise ArchiveError(f"member {member.name!r}: links are not allowed (-> {member.linkname!r})")
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(f"member {member.name!r}: devices, FIFOs and other special files "
                                       "are not allowed")
                if not rel.parts:
                    continue
                if rel in seen:
                    raise ArchiveError(f"member {member.name!r}: appears twice")
                clash = next((p for p in rel.parents if p in files), None)
                if clash is not None:
                    raise ArchiveError(f"member {member.name!r}: {str(clash)!r} is a file, not a directory")
                if member.isfile() and rel in dirs:
                    raise ArchiveError(f"member {member.name!r}: a directory of that name came before it")
                seen.add(rel)
                (files if member.isfile() else dirs).add(rel)
                dirs.update(rel.parents)
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                total += member.size
                if total > max_bytes:
                    raise ArchiveError(f"unpacked size exceeds the cap of {max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise ArchiveError(f"member {member.name!r}: cannot be read")
                with source, target.open("xb") as out:
                    while block := source.read(_CHUNK):
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
        except tarfile.TarError as exc:
            raise ArchiveError(f"{tar_path.name}: corrupt tar ({exc})") from None
    for sub in sorted({p.parent for p in dest.rglob("*")} | {dest}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(sub)
