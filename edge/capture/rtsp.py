"""Why an RTSP camera refused a stream, in the camera's own words.

When FFmpeg cannot open a stream, OpenCV only returns "not opened"; the camera's answer
("method DESCRIBE failed: 404 Not Found") goes to FFmpeg's raw stderr, never to us, so a wrong path
and refused credentials looked the same as a camera that is off. After a failed open the capture asks
once more itself: one RTSP DESCRIBE over TCP with the URL's credentials (Basic or Digest, RFC 2617 /
RFC 7616, as the camera asks) and a hard deadline, and names the status: `explain_rtsp_failure`.

Every message holds the URL only as `redact_url` shows it, the path but never the query (some cameras
take credentials there), and never a password; the camera's reason text is cut to printable ASCII.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from base64 import b64encode
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_PORT = 554
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024
USER_AGENT = "affect-sensor"


@dataclass(frozen=True)
class RtspAnswer:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # (lower-case name, value), in order
    body: bytes = b""

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


class RtspProtocolError(OSError):
    """The peer answered, but not in RTSP."""


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    url: str  # the request URL: the stream URL without user info
    path: str
    user: str | None
    password: str | None


def _target(uri: str) -> _Target:
    parts = urlsplit(uri)
    if parts.scheme.lower() != "rtsp" or not parts.hostname:
        raise ValueError("not an rtsp://host/... URL")
    host = parts.hostname
    port = parts.port or DEFAULT_PORT
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return _Target(host, port, url, parts.path or "/", user, password)


def _read_answer(sock: socket.socket, deadline: float) -> RtspAnswer:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEADER_BYTES:
            raise RtspProtocolError("RTSP answer headers too long")
        data += _recv(sock, deadline)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"RTSP/\d\.\d (\d{3})(?: (.*))?$", lines[0])
    if match is None:
        raise RtspProtocolError(f"not an RTSP answer: {_printable(lines[0])!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    length = next((int(v) for k, v in headers if k == "content-length" and v.isdigit()), 0)
    length = min(length, MAX_BODY_BYTES)
    while len(rest) < length:
        rest += _recv(sock, deadline)
    return RtspAnswer(int(match.group(1)), _printable(match.group(2) or ""), headers, rest[:length])


def _recv(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no complete RTSP answer in time")
    sock.settimeout(remaining)
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionResetError("the camera closed the connection without an answer")
    return chunk


def _request(sock: socket.socket, method: str, target: _Target, cseq: int, deadline: float,
             extra: dict[str, str]) -> RtspAnswer:
    lines = [f"{method} {target.url} RTSP/1.0", f"CSeq: {cseq}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return _read_answer(sock, deadline)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Digest realm="x", nonce="y"' -> ("digest", {"realm": "x", "nonce": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', rest)}
    return scheme.lower(), params


def digest_authorization(params: dict[str, str], user: str, password: str, method: str, uri: str,
                         cnonce: str | None = None, nc: int = 1) -> str:
    """An Authorization header answering a Digest challenge (RFC 2617; MD5, SHA-256 per RFC 7616)."""
    algorithm = params.get("algorithm", "MD5")
    base = algorithm.upper().removesuffix("-SESS")
    hasher = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}.get(base)
    if hasher is None:
        raise ValueError(f"unsupported Digest algorithm {algorithm!r}")

    def h(text: str) -> str:
        return hasher(text.encode("utf-8")).hexdigest()

    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    cnonce = cnonce if cnonce is not None else os.urandom(8).hex()
    ha1 = h(f"{user}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    fields = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in qops:
        response = h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', "qop=auth", f"nc={nc:08x}", f'cnonce="{cnonce}"']
    else:
        fields.append(f'response="{h(f"{ha1}:{nonce}:{ha2}")}"')
    if "algorithm" in params:
        fields.append(f"algorithm={algorithm}")
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)


def basic_authorization(user: str, password: str) -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode("ascii")


def _authorization(challenges: list[str], user: str, password: str, method: str, uri: str) -> str | None:
    parsed = [parse_challenge(c) for c in challenges]
    for scheme, params in parsed:  # Digest first: it never sends the password itself
        if scheme == "digest":
            try:
                return digest_authorization(params, user, password, method, uri)
            except ValueError:
                continue
    if any(scheme == "basic" for scheme, _ in parsed):
        return basic_authorization(user, password)
    return None


def describe(uri: str, timeout: float) -> RtspAnswer:
    """DESCRIBE `uri` once, answering one authentication challenge with the URL's credentials.

    Raises OSError (refused, unreachable, timed out, not RTSP) or ValueError (not an rtsp:// URL).
    """
    target = _target(uri)
    deadline = time.monotonic() + timeout
    with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
        accept = {"Accept": "application/sdp"}
        answer = _request(sock, "DESCRIBE", target, 1, deadline, accept)
        if answer.status == 401 and target.user is not None:
            auth = _authorization(answer.header_values("www-authenticate"), target.user, target.password or "",
                                  "DESCRIBE", target.url)
            if auth is not None:
                answer = _request(sock, "DESCRIBE", target, 2, deadline, {**accept, "Authorization": auth})
        return answer


def explain_rtsp_failure(uri: str, timeout: float = 3.0) -> str:
    """One line saying why `uri` would not open, from the camera's answer to a DESCRIBE (bounded by `timeout`)."""
    try:
        target = _target(uri)
    except ValueError as exc:
        return str(exc)
    where = f"{target.host}:{target.port}"
    try:
        answer = describe(uri, timeout)
    except socket.gaierror:
        return f"cannot resolve the camera's host name {target.host!r}"
    except ConnectionRefusedError:
        return f"connection to {where} refused (camera off, or wrong port?)"
    except TimeoutError:
        return f"no RTSP answer from {where} within {timeout:g} s (camera hung or unreachable)"
    except RtspProtocolError as exc:
        return f"{where} does not speak RTSP ({exc})"
    except OSError as exc:
        return f"cannot talk to {where}: {exc.strerror or type(exc).__name__}"
    status = f"RTSP {answer.status} {answer.reason}".rstrip()
    if answer.status == 404:
        return f"{status}: the camera has no stream at path {target.path!r} (wrong path?)"
    if answer.status == 401:
        if target.user is None:
            return f"{status}: the camera requires a user name and password (none in the URL)"
        return f"{status}: the camera refused the credentials of user {target.user!r}"
    if answer.status == 403:
        return f"{status}: user {target.user!r} may not view this stream"
    if answer.status == 200:
        codec = _video_codec(answer.body)
        return (f"the camera answered DESCRIBE with {status}, but FFmpeg could not open the stream"
                + (f" (video codec {codec})" if codec else ""))
    return status


def _video_codec(sdp: bytes) -> str | None:
    """The encoding name of the first video stream in an SDP body ("H264", "H265", "JPEG", ...)."""
    in_video = False
    for line in sdp.decode("latin-1").splitlines():
        if line.startswith("m="):
            in_video = line.startswith("m=video")
        elif in_video and line.startswith("a=rtpmap:"):
            parts = line.split(" ", 1)
            if len(parts) == 2:
                return _printable(parts[1].split("/")[0])
    return None


def _printable(text: str, limit: int = 60) -> str:
    return "".join(ch for ch in text if " " <= ch <= "~")[:limit]
