"""The authority (`host[:port]`) of an Origin header, compared with Host by the access guard and the WebSocket relay."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_authority(origin: str) -> str:
    """`host:port` of an Origin header (`null` and garbage give a value that matches no Host)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return "\x00"
    if not parts.netloc:
        return "\x00"
    default = {"http": "80", "https": "443"}.get(parts.scheme, "")
    netloc = parts.netloc.lower()
    if default and netloc.endswith(":" + default):
        netloc = netloc[: -len(default) - 1]
    return netloc
