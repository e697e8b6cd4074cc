"""The one reading of a proxied request's path: what is matched is exactly what is forwarded.

A client's path reaches the proxy percent-encoded (ASGI `raw_path`). Decoding it before matching
and forwarding the raw form would let the two disagree: `/v1/chat/completions%3F` is not the chat
endpoint to a matcher that sees `.../completions?`, yet an upstream that decodes it serves chat,
unmetered. So the path is split on its literal slashes, each segment decoded once, and a segment
that would change the path's shape after decoding is refused: an encoded `/`, `\\`, `?` or `#`, a
dot segment (`.`, `..`, `%2e%2e`), a control character, bytes that are not UTF-8. What is left is
matched on the decoded segments and forwarded re-encoded from them, the same segments, so nothing
can climb out of a backend's `base_url` path or split into another endpoint on the way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

#: characters a path segment may carry unencoded (RFC 3986 `pchar` minus `%`)
_SAFE = "-._~!$&'()*+,;=:@"
#: a path made of these characters only needs no decoding (and no encoding) at all
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_FORBIDDEN = {"/": "an encoded '/'", "\\": "a '\\'", "?": "an encoded '?'", "#": "an encoded '#'"}


class PathRefused(ValueError):
    """The request path cannot be read one way only; answered with a 400 in the protocol's shape."""


@dataclass(frozen=True, slots=True)
class ProxyPath:
    """A request path read once: the backend prefix, and the rest decoded (to match) and encoded (to send)."""

    backend: str
    #: the path after the prefix, decoded, with its leading slash (what the meters match)
    rest: str
    #: the same segments re-encoded (what goes upstream after the backend's base_url)
    forward: str


def _segment(raw: str) -> str:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("the path is not UTF-8 once percent-decoded") from None
    for ch, what in _FORBIDDEN.items():
        if ch in text:
            raise PathRefused(f"the path has {what} inside a segment; send it unencoded or not at all")
    if text in (".", ".."):
        raise PathRefused("the path has a dot segment ('.' or '..'); send the resolved path")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise PathRefused("the path has a control character")
    return text


def read_path(raw_path: bytes | str) -> ProxyPath:
    """Split `/{backend}/{rest}` from the raw (percent-encoded) path; PathRefused when ambiguous."""
    raw = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else raw_path
    if not raw.startswith("/"):
        raise PathRefused("the path must start with '/'")
    if _PLAIN.fullmatch(raw):  # nothing encoded (what SDKs send): only dot segments to look for
        if "." in raw:
            for segment in raw.split("/"):
                if segment in (".", ".."):
                    raise PathRefused("the path has a dot segment ('.' or '..'); send the resolved path")
        name, _, tail = raw[1:].partition("/")
        return ProxyPath(backend=name, rest="/" + tail, forward="/" + tail)
    segments = [_segment(s) for s in raw[1:].split("/")]
    return ProxyPath(
        backend=segments[0],
        rest="/" + "/".join(segments[1:]),
        forward="/" + "/".join(quote(s, safe=_SAFE) for s in segments[1:]),
    )


def encode(path: str) -> str:
    """A decoded path as `read_path` checked it (no `/` inside a segment), percent-encoded to send."""
    return path if _PLAIN.fullmatch(path) else quote(path, safe=_SAFE + "/")
