"""The ASGI types and the few plain answers the guard and the login form send.

Raw ASGI messages (no Starlette response objects): a status with a body, a 303 redirect, the
project's JSON error shape (`llmbudget/web/errors.py`), a refused WebSocket upgrade, and a
request body read up to a limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..web.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def read_bounded(receive: Receive, limit: int) -> bytes | None:
    """The request's body, or None once it is longer than `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not msg.get("more_body"):
            return b"".join(parts)


async def send_body(
    send: Send, status: int, body: bytes, ctype: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """One whole answer: status, Content-Type, Content-Length, any `extra` headers, the body."""
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def redirect(send: Send, location: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A 303 to `location`."""
    headers = [
        (b"location", location.encode("latin-1", "replace")),
        (b"content-length", b"0"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def json_error(
    send: Send, status: int, message: str, code: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """The API's JSON error shape."""
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send_body(send, status, body, b"application/json", extra)


async def ws_refuse(send: Send) -> None:
    """Refuse a WebSocket: closing before accepting makes the server answer the upgrade with 403."""
    await send({"type": "websocket.close", "code": 1008})
