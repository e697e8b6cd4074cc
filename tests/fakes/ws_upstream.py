"""A fake OpenAI WebSocket upstream: the Responses API over WebSocket and the Realtime API.

A real aiohttp server on 127.0.0.1 (port 0) in a thread, speaking the event shapes OpenAI documents
(and Codex reads): `/v1/responses` answers each `response.create` with `response.created`,
`response.output_text.delta` events and `response.completed` carrying `response.usage`;
`/v1/realtime?model=M` sends `session.created` on connect and answers `response.create` with
`response.created`, transcript deltas and `response.done` carrying Realtime usage
(`input_token_details` with cached and audio parts, `output_token_details`).

Every other text frame comes back as `{"type": "echo", "data": <frame>}` and every binary frame
comes back unchanged, so order both ways can be checked. `{"type": "fake.close", "code": C,
"reason": R}` makes the server close with that code. A `response.create` may carry
`metadata.fake_input` / `metadata.fake_output` (strings) to pick the usage it reports.

The upgrade's `x-fake` header picks a behaviour for the connection: `hold` (after the first delta
wait until the client goes away), `cut` (after the first delta drop the TCP connection with no
close frame), `close` (after the first delta close with 4001 "fake upstream closed"),
`no-websocket` (a 404 instead of the upgrade, as a server without WebSocket mode answers).
Each connection's upgrade headers, query and frames are kept in `connections` for assertions.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

from aiohttp import WSMsgType, web

RESPONSES_MODEL = "gpt-5-codex"
RESPONSES_USAGE = {
    "input_tokens": 1500,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 220,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 1720,
}
REALTIME_MODEL = "gpt-realtime-2025-08-28"
REALTIME_USAGE = {
    "total_tokens": 1300,
    "input_tokens": 1000,
    "output_tokens": 300,
    "input_token_details": {
        "text_tokens": 400,
        "audio_tokens": 600,
        "image_tokens": 0,
        "cached_tokens": 200,
        "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 100, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 200},
}
#: what one delta says (the text a cut response had streamed)
DELTA = "Hello from the fake upstream. "


class FakeWebSocketUpstream:
    def __init__(self) -> None:
        self.url = ""
        #: one dict per connection: path, query, headers, frames (client -> server, in order)
        self.connections: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeWebSocketUpstream:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-ws-upstream")
        self._thread.start()
        assert self._ready.wait(10), "fake WebSocket upstream did not start"
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/v1/responses", self._responses)
        app.router.add_get("/v1/realtime", self._realtime)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        if self._loop is None:
            return
        assert self._runner is not None
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    # ---------------------------------------------------------------- handlers
    async def _open(self, request: web.Request) -> tuple[web.WebSocketResponse, dict[str, Any]]:
        record: dict[str, Any] = {
            "path": request.path,
            "query": request.query_string,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "frames": [],
        }
        self.connections.append(record)
        ws = web.WebSocketResponse(protocols=("realtime",), autoping=True, max_msg_size=0)
        ws.headers["x-models-etag"] = "etag-1"
        ws.headers["openai-model"] = RESPONSES_MODEL
        await ws.prepare(request)
        return ws, record

    async def _serve(self, request: web.Request, realtime: bool) -> web.StreamResponse:
        mode = request.headers.get("x-fake", "")
        if mode == "no-websocket":  # an OpenAI-compatible server without WebSocket mode
            return web.json_response({"error": {"message": "Not Found"}}, status=404)
        ws, record = await self._open(request)
        model = request.query.get("model", REALTIME_MODEL) if realtime else RESPONSES_MODEL
        if realtime:
            await ws.send_str(
                json.dumps({"type": "session.created", "event_id": "ev_0", "session": {"model": model}})
            )
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                record["frames"].append(msg.data)
                await ws.send_bytes(msg.data)
                continue
            if msg.type != WSMsgType.TEXT:
                break
            record["frames"].append(msg.data)
            frame = json.loads(msg.data)
            kind = frame.get("type")
            if kind == "fake.close":
                await ws.close(code=int(frame["code"]), message=str(frame.get("reason", "")).encode())
                break
            if kind != "response.create":
                await ws.send_str(json.dumps({"type": "echo", "data": msg.data}))
                continue
            body = frame.get("response") if realtime else frame
            if realtime and not isinstance(body, dict):
                body = {}
            done = await self._respond(ws, body, realtime, model, mode, request)
            if not done:
                break
        record["close_code"] = ws.close_code
        return ws

    async def _respond(
        self,
        ws: web.WebSocketResponse,
        body: dict[str, Any],
        realtime: bool,
        model: str,
        mode: str,
        request: web.Request,
    ) -> bool:
        rid = ("resp_" if not realtime else "resp_rt_") + uuid.uuid4().hex[:12]
        resp: dict[str, Any] = {"id": rid, "object": "realtime.response" if realtime else "response"}
        if not realtime:
            resp["model"] = body.get("model") or model
        resp["status"] = "in_progress"
        await ws.send_str(json.dumps({"type": "response.created", "sequence_number": 0, "response": resp}))
        delta_type = "response.output_audio_transcript.delta" if realtime else "response.output_text.delta"
        await ws.send_str(
            json.dumps({"type": delta_type, "sequence_number": 1, "item_id": "msg_1", "delta": DELTA})
        )
        if mode == "hold":
            await ws.receive()  # until the client's side goes away (its close reaches us)
            return False
        if mode == "cut":
            assert request.transport is not None
            request.transport.abort()
            return False
        if mode == "close":
            await ws.close(code=4001, message=b"fake upstream closed")
            return False
        await ws.send_str(
            json.dumps({"type": delta_type, "sequence_number": 2, "item_id": "msg_1", "delta": DELTA})
        )
        meta = body.get("metadata") or {}
        if realtime:
            usage = json.loads(json.dumps(REALTIME_USAGE))
        else:
            usage = json.loads(json.dumps(RESPONSES_USAGE))
        if "fake_input" in meta:
            usage["input_tokens"] = int(meta["fake_input"])
        if "fake_output" in meta:
            usage["output_tokens"] = int(meta["fake_output"])
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        final = {**resp, "status": "completed", "usage": usage, "output": []}
        kind = "response.done" if realtime else "response.completed"
        await ws.send_str(json.dumps({"type": kind, "sequence_number": 3, "response": final}))
        return True

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, realtime=False)

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, realtime=True)
