"""Keep credentials in URLs (rtsp://user:password@camera/…) out of logs, errors and printed configs.

The URL is parsed with `urllib.parse.urlsplit`, which splits user info at the
*last* `@` before the host, so a password holding `@`, `:` or percent-escapes
is hidden whole instead of leaking its tail. A URL the parser cannot make
sense of (an unescaped `/` in the password, a bad port) loses everything
before its last `@`: over-redacting a log line is harmless, leaking is not.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(uri: str) -> str:
    """`uri` with any password replaced by `***` (the user name stays: it helps debugging); else unchanged."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest:
        return uri
    try:
        parts = urlsplit(uri)
        has_password = parts.password is not None
    except ValueError:
        return _blunt(scheme, rest)
    if "@" not in parts.netloc:  # as parsed, the '@' is in the path or query: a password with a '/' in it?
        head = rest.split("@", 1)[0]
        return _blunt(scheme, rest) if ":" in head and not {"?", "#"} & set(head) else uri
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:{MASK}" if has_password else user
    return urlunsplit((parts.scheme, f"{masked}@{hostport}", parts.path, parts.query, parts.fragment))


def _blunt(scheme: str, rest: str) -> str:
    return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"
