"""The ASGI side of the proxy: its message types, reading a request body, and the answers it sends
itself (errors in the wire protocol's shape, hop-by-hop headers dropped from an upstream answer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from decimal import Decimal
from typing import Any

from yarl import URL

from ..wire import WireProtocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: an ASGI application (what serves a scope)
ASGIHandler = Callable[[Scope, Receive, Send], Awaitable[None]]

#: headers that belong to one connection, never forwarded (RFC 9110 7.6.1) plus those we recompute
HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)


class TooLarge(Exception):
    """The request body is over `server.max_body_mb`."""


async def read_body(receive: Receive, length: bytes | None, limit: int) -> bytes:
    """The whole request body, refused (`TooLarge`) as soon as it is known to be over `limit` bytes.

    A declared Content-Length is checked before anything is read; a chunked body is counted as
    it arrives, so an oversized body is never held whole.
    """
    too_large = f"request body is larger than server.max_body_mb ({limit / 1048576:g} MB)"
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise TooLarge(too_large)
    msg = await receive()
    body = msg.get("body", b"")
    if not msg.get("more_body"):
        if len(body) > limit:
            raise TooLarge(too_large)
        return bytes(body)
    parts = [body]
    size = len(body)
    while msg.get("more_body"):
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(too_large)
        parts.append(chunk)
    return b"".join(parts)


def response_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = [(k.lower(), v) for k, v in raw]
    named = {t.strip().lower() for k, v in out if k == b"connection" for t in v.split(b",")}
    drop = HOP | named if named - {b"keep-alive", b"close"} else HOP
    return [(k, v) for k, v in out if k not in drop]


async def send_error(
    send: Send,
    protocol: WireProtocol,
    status: int,
    message: str,
    code: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = protocol.error_bytes(status, message, code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def is_json(ctype: bytes) -> bool:
    """`application/json` or a `+json` type, any parameters (what every SDK sends)."""
    media = ctype.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def ctype_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    for k, v in headers:
        if k == b"content-type":
            return v
    return b""


def host_port(base_url: str) -> str:
    """`host:port` of a URL (the scheme's port when none is written): where a backend lives, no path."""
    url = URL(base_url)
    host = url.host or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.port}" if url.port is not None else host


def header_safe(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


def fmt_cost(cost: Decimal) -> str:
    return format(cost.normalize(), "f") if cost else "0"
