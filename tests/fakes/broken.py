"""An upstream that answers 200 with something that is not its protocol, chosen per request.

`x-broken: MODE` picks the answer; `x-broken-good: N` sends N valid events of the protocol
first (so the break comes mid-stream). `scripted` streams the chunks the test put in
`BrokenUpstream.script` (hypothesis-generated SSE), as they are, with the Content-Type in
`BrokenUpstream.script_type`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .upstream import FakeUpstream


def good_events(protocol: str, n: int) -> list[bytes]:
    """`n` valid streamed events of `protocol` (no end marker)."""
    out: list[bytes] = []
    for i in range(n):
        if protocol == "anthropic":
            data = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f"t{i}"},
            }
            out.append(f"event: content_block_delta\ndata: {json.dumps(data)}\n\n".encode())
        elif protocol == "gemini":
            data = {"candidates": [{"content": {"parts": [{"text": f"t{i}"}], "role": "model"}}]}
            out.append(f"data: {json.dumps(data)}\r\n\r\n".encode())
        else:
            data = {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": f"t{i}"}}],
            }
            out.append(f"data: {json.dumps(data)}\n\n".encode())
    return out


#: mode -> (content type, bytes after the good events)
BROKEN: dict[str, tuple[str, bytes]] = {
    "garbage": ("text/event-stream", b"\x00\xff\xfegarbage\x01\n\n"),
    "html": ("text/html; charset=utf-8", b"<html><body>502 Bad Gateway</body></html>\n"),
    "truncated": ("text/event-stream", b'data: {"id": "c", "choices": [{"delta": {"cont'),
    "truncated-line": ("text/event-stream", b'data: {"id": "c", "choices": [\n\n'),
    "wrong-type": ("application/octet-stream", b'data: {"a": 1}\n\n'),
}


class BrokenUpstream(FakeUpstream):
    """The fake provider server, broken on request."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[bytes] = []
        self.script_type = "text/event-stream"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests.append({"method": request.method, "path": request.path, "query": request.query_string})
        mode = request.headers.get("x-broken", "")
        path = request.path
        protocol = (
            "anthropic"
            if path.endswith("/messages")
            else "gemini"
            if ":generateContent" in path or ":streamGenerateContent" in path
            else "openai"
        )
        if mode == "json-not-json":  # a non-streamed 200 whose body is not JSON
            return web.Response(body=b"<html>oops</html>", status=200, content_type="text/html")
        if mode == "json-empty":
            return web.Response(body=b"", status=200, content_type="application/json")
        if mode == "scripted":
            return await self._send(request, self.script_type, list(self.script))
        good = good_events(protocol, int(request.headers.get("x-broken-good", "0")))
        if mode == "array":  # Gemini's JSON-array stream, truncated or not
            items = [json.dumps({"candidates": [{"content": {"parts": [{"text": "x"}]}}]}).encode()] * 2
            body = b"[" + b",\r\n".join(items)
            tail = request.headers.get("x-broken-tail", "]")
            return await self._send(request, "application/json; charset=UTF-8", [body, tail.encode()])
        ctype, bad = BROKEN[mode]
        return await self._send(request, ctype, [*good, bad])

    async def _send(self, request: web.Request, ctype: str, chunks: list[bytes]) -> web.StreamResponse:
        headers: dict[str, Any] = {"Content-Type": ctype}
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp
