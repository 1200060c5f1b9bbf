"""Fetch a bundle `.tar` into a `.part` file that survives restarts, resuming with HTTP Range.

urllib from the standard library rather than requests: the agent needs one GET
with a Range header, a timeout and TLS verification, all of which urllib does,
and the device keeps one dependency fewer. The expected size and SHA-256 come
from the signed desired document; the download is capped at that size (and at
`update.max_download_bytes`) whatever the server says, and is checked against
both before anything reads it.
"""

from __future__ import annotations

import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edge.bundle.store import sha256_file

_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class DownloadSpec:
    url: str
    sha256: str
    size: int
    timeout_s: float = 60.0
    attempts: int = 3
    allow_http: bool = False


Progress = Callable[[int, int], None]


def fetch(spec: DownloadSpec, part: Path, progress: Progress | None = None) -> Path:
    """Download to `part` (resuming what is there), then verify size and sha256; return `part`.

    `part` is named after the expected SHA-256, so only a download of the same
    file resumes it; but its bytes may have come from another URL (a hostile or
    stale mirror). A resumed download that fails the hash is therefore thrown
    away and fetched once more from the start before it counts as a mismatch.
    """
    resumed = part.is_file() and part.stat().st_size > 0
    try:
        return _fetch_once(spec, part, progress)
    except DownloadError as exc:
        if exc.code != "hash_mismatch" or not resumed:
            raise
    part.unlink(missing_ok=True)
    return _fetch_once(spec, part, progress)


def _fetch_once(spec: DownloadSpec, part: Path, progress: Progress | None) -> Path:
    scheme = urlparse(spec.url).scheme
    if scheme == "http" and not spec.allow_http:
        raise DownloadError("download_failed", f"{spec.url}: plain http is not allowed "
                                               "(set update.allow_http = true to permit it)")
    if scheme not in ("https", "http", "file", ""):
        raise DownloadError("download_failed", f"{spec.url}: unsupported URL scheme {scheme!r}")
    if scheme in ("file", ""):
        _copy_local(spec, part)
    else:
        last: Exception | None = None
        for attempt in range(spec.attempts):
            try:
                _http_resume(spec, part, progress)
                break
            except DownloadError:
                raise
            except (OSError, http.client.HTTPException) as exc:  # network trouble: retry, resuming
                last = exc
                time.sleep(min(0.2 * 2**attempt, 2.0))
        else:
            raise DownloadError("download_failed", f"{spec.url}: {spec.attempts} attempts failed; last: {last}")
    size = part.stat().st_size
    if size != spec.size:
        raise DownloadError("download_failed", f"{spec.url}: got {size} bytes, the desired document says "
                                               f"{spec.size} (truncated download)")
    if sha256_file(part) != spec.sha256:
        part.unlink(missing_ok=True)  # a wrong file will not become right by resuming it
        raise DownloadError("hash_mismatch", f"{spec.url}: sha256 of the download does not match the desired document")
    return part


def _copy_local(spec: DownloadSpec, part: Path) -> None:
    source = Path(urlparse(spec.url).path if spec.url.startswith("file:") else spec.url)
    try:
        size = source.stat().st_size
        if size > spec.size:
            raise DownloadError("too_large", f"{source}: {size} bytes, more than the {spec.size} announced")
        with source.open("rb") as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        raise DownloadError("download_failed", f"{source}: {exc.strerror or exc}") from None


def _http_resume(spec: DownloadSpec, part: Path, progress: Progress | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    if have > spec.size:
        part.unlink()
        have = 0
    if have == spec.size:
        return
    request = urllib.request.Request(spec.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=spec.timeout_s)  # scheme checked in fetch()
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the server's file is shorter than announced
            raise DownloadError("download_failed", f"{spec.url}: server has no bytes past {have} of the "
                                                   f"{spec.size} announced (truncated file)") from None
        if 400 <= exc.code < 500:
            raise DownloadError("download_failed", f"{spec.url}: HTTP {exc.code} {exc.reason}") from None
        raise
    with response:
        if have and response.status != 206:  # server ignored Range: start over
            have = 0
        mode = "ab" if have else "wb"
        with part.open(mode) as out:
            digest_limit = spec.size - have
            received = 0
            while block := response.read(_CHUNK):
                received += len(block)
                if received > digest_limit:
                    raise DownloadError("too_large", f"{spec.url}: server sent more than the {spec.size} bytes "
                                                     "announced")
                out.write(block)
                if progress is not None:
                    progress(have + received, spec.size)
            out.flush()
            os.fsync(out.fileno())
    if have + received < spec.size:
        raise ConnectionError(f"download ended after {have + received} of {spec.size} bytes (truncated)")

