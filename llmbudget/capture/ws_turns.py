"""Metering a relayed WebSocket per response: each `response.create` (or a response the Realtime
server starts itself) is a turn, admitted by the budget gate with the request's model and output
limit; its terminal event carries the usage, recorded through the proxy's `CallRecorder` before
that frame is passed on; a connection that ends mid-response records the open turn as
`interrupted`. `TurnMeter` is the relay's base (`llmbudget/capture/ws.py`)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict

from ..admission import Admission, Gate
from ..events import UsageEvent
from ..pricing.normalize import openai_realtime_usage
from .asgi import Send
from .base import _TEXT_RE, BadRequest, output_limit
from .openai import OpenAIMeter, ResponsesMeter
from .protocols import OPENAI_METERED, MeteredProtocol
from .proxy_calls import MeteredCalls
from .request import ProxyRequest

log = logging.getLogger("llmbudget.proxy")

#: server events worth parsing (every other frame passes with a substring check only)
INTERESTING = (
    '"response.created"',
    '"response.completed"',
    '"response.failed"',
    '"response.incomplete"',
    '"response.done"',
    '"session.created"',
    '"session.updated"',
    '"error"',
)
_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "response.done"})
_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "response.done"})
#: how many (backend, attribution) -> last model memos are kept for the upgrade's budget check
_MEMO_SIZE = 1024


class RealtimeMeter(OpenAIMeter):
    """One Realtime response: usage from `response.done` (`input_token_details`, `output_token_details`)."""

    def usage(self) -> Any:
        if self.raw_usage is None:
            return None

        return openai_realtime_usage(self.raw_usage)


@dataclass(slots=True)
class _Turn:
    """One response on a connection: its request, meter and budget reservation."""

    req: ProxyRequest
    response_id: str | None = None
    ttft_ms: float | None = None


@dataclass(slots=True)
class Conn:
    """One relayed connection."""

    backend: str
    #: the backend's wire protocol (the one with relayed WebSocket APIs: OpenAI's)
    protocol: MeteredProtocol
    #: responses | realtime
    api: str
    path: str
    attribution: dict[str, Any]
    headers: CIMultiDict[str]
    query: str
    has_key: bool
    #: the model named in the URL (Realtime) or by the session (`session.created` / `session.updated`)
    model: str | None = None
    turns: list[_Turn] = field(default_factory=list)
    #: set when the relay closes the connection itself (budget refusal); (code, reason)
    closing: tuple[int, str] | None = None
    #: the code of the upstream's close frame, when it closed first
    upstream_code: int | None = None


def _error_frame(status: int, message: str, code: str, *, event_id: str | None = None) -> str:
    """An `error` event in OpenAI's shape: Realtime's `{type, error: {...}}`, with the `status` that
    Codex reads from a Responses WebSocket error (429 is its usage-limit error)."""
    frame: dict[str, Any] = {
        "type": "error",
        "status": status,
        "error": OPENAI_METERED.error_body(status, message, code)["error"],
    }
    if event_id:
        frame["error"]["event_id"] = event_id
    return json.dumps(frame)


class TurnMeter:
    """The per-response metering and budget admission of the WebSocket relay."""

    def __init__(self, proxy: MeteredCalls) -> None:
        self.proxy = proxy
        #: (backend, key, agent, session) -> the model its last response used: the upgrade's budget
        #: check prices a reconnecting client's calls at that model
        self._last_model: OrderedDict[tuple[Any, ...], str] = OrderedDict()

    def _memo_key(self, conn: Conn) -> tuple[Any, ...]:
        a = conn.attribution
        return (conn.backend, a.get("key"), a.get("agent"), a.get("session"))

    def _turn_req(self, conn: Conn, request: dict[str, Any], model: str | None) -> ProxyRequest:
        if conn.api == "realtime":
            meter: OpenAIMeter = RealtimeMeter(
                protocol=conn.protocol.name,
                endpoint="realtime",
                request=request,
                body=b"",
                request_model=model,
            )
        else:
            meter = ResponsesMeter(
                protocol=conn.protocol.name,
                endpoint="responses",
                request=request,
                body=b"",
                request_model=model,
            )
        meter.stream = True
        return ProxyRequest(
            method="GET",
            path=conn.path,
            query="",
            headers=conn.headers,
            body=b"",
            proto=conn.protocol,
            backend=conn.backend,
            meter=meter,
            attribution=conn.attribution,
            has_key=conn.has_key,
        )

    # ---------------------------------------------------------------- turns and budgets
    async def _open_turn(self, conn: Conn, text: str, send: Send) -> bool:
        """A client `response.create`: a new turn, admitted by the budget gate; False when refused."""
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            return True  # not ours to judge: the upstream answers it
        if not isinstance(frame, dict) or frame.get("type") != "response.create":
            return True
        request = frame.get("response") if isinstance(frame.get("response"), dict) else None
        if request is None:
            request = {k: v for k, v in frame.items() if k != "type"}
        if conn.api == "realtime":
            model = conn.model
        else:
            m = request.get("model")
            model = m if isinstance(m, str) and m else conn.model
            conn.model = model or conn.model
        req = self._turn_req(conn, request, model)
        meter = req.meter
        assert meter is not None
        try:
            meter.max_output_tokens = output_limit(
                request, "max_output_tokens" if conn.api == "responses" else "max_response_output_tokens"
            )
        except BadRequest:
            meter.max_output_tokens = None  # "inf" and the like: no bound, the upstream judges it
        turn = _Turn(req=req)
        gate = self.proxy.services.gate
        if gate is not None and not await self._admit_turn(gate, conn, turn, send, frame.get("event_id")):
            return False
        conn.turns.append(turn)
        return True

    async def _admit_turn(
        self, gate: Gate, conn: Conn, turn: _Turn, send: Send, event_id: object = None
    ) -> bool:
        proxy = self.proxy
        req = turn.req
        try:
            admission: Admission = await gate.admit(proxy.call_info(req))
        except Exception as e:  # fail closed, as for HTTP calls
            log.error("proxy_gate_failed backend=%s error=%s: %s", conn.backend, type(e).__name__, e)
            await self._send_quietly(
                send,
                _error_frame(
                    503,
                    f"llmbudget could not check the budget ({type(e).__name__}); try again",
                    "budget_check_failed",
                ),
            )
            conn.closing = (1011, "llmbudget: budget check failed")
            return False
        if admission.allowed and not admission.fallback_backend:
            req.admission = admission if admission.reservation_id else None
            return True
        message = admission.message or admission.notice or "budget exhausted"
        req.reason = message
        await proxy.record_call(
            req,
            conn.backend,
            http_status=admission.status or 429,
            status="blocked",
            interrupted=False,
            upstream_reached=False,
        )
        log.info("proxy_ws_refused backend=%s path=%s reason=budget", conn.backend, conn.path)
        eid = event_id if isinstance(event_id, str) else None
        await self._send_quietly(
            send, _error_frame(admission.status or 429, message, "budget_exceeded", event_id=eid)
        )
        conn.closing = (1008, "llmbudget: budget exhausted")
        return False

    async def _refused_close(self, conn: Conn, upstream: aiohttp.ClientWebSocketResponse, send: Send) -> None:
        """Close the client's side after a refusal (the relay then closes the upstream's)."""
        code, reason = conn.closing or (1008, "llmbudget: refused")
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code, "reason": reason})

    @staticmethod
    async def _send_quietly(send: Send, text: str) -> None:
        with contextlib.suppress(Exception):
            await send({"type": "websocket.send", "text": text})

    def _seen_text(self, conn: Conn, text: str) -> None:
        """A delta: count its text (the estimate for a response cut before its usage) and its first byte."""
        if not conn.turns or "audio" in text[:80]:
            return
        turn = conn.turns[0]
        meter = turn.req.meter
        assert meter is not None
        if turn.ttft_ms is None and '"delta"' in text:
            turn.ttft_ms = (time.perf_counter() - turn.req.started) * 1000.0
        for m in _TEXT_RE.findall(text.encode("utf-8", "replace")):
            meter.out_chars += len(m)

    def _turn_for(self, conn: Conn, response_id: Any) -> _Turn | None:
        if isinstance(response_id, str):
            for turn in conn.turns:
                if turn.response_id == response_id:
                    return turn
        for turn in conn.turns:
            if turn.response_id is None:
                return turn
        return conn.turns[0] if conn.turns else None

    async def _server_event(
        self, conn: Conn, text: str, send: Send, upstream: aiohttp.ClientWebSocketResponse
    ) -> bool:
        """Look at a server event that may matter for metering; False when the connection must end."""
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return True
        if not isinstance(obj, dict):
            return True
        kind = obj.get("type")
        resp = obj.get("response") if isinstance(obj.get("response"), dict) else None
        if kind in ("session.created", "session.updated"):
            session = obj.get("session")
            if isinstance(session, dict) and isinstance(session.get("model"), str) and session["model"]:
                conn.model = session["model"][:200]
            return True
        if kind == "response.created":
            rid = resp.get("id") if resp else None
            turn = None
            for t in conn.turns:
                if t.response_id is None:
                    turn = t
                    break
            if turn is None:
                # a response the server started itself (Realtime voice activity): admitted now
                turn = _Turn(req=self._turn_req(conn, {}, conn.model))
                gate = self.proxy.services.gate
                if gate is not None and not await self._admit_turn(gate, conn, turn, send):
                    turn.response_id = rid if isinstance(rid, str) else None
                    await self._refused_close(conn, upstream, send)
                    return False
                conn.turns.append(turn)
            turn.response_id = rid if isinstance(rid, str) else None
            if resp and isinstance(resp.get("model"), str) and turn.req.meter is not None:
                turn.req.meter.model = resp["model"]
            return True
        if kind in _TERMINAL and resp is not None:
            turn = self._turn_for(conn, resp.get("id"))
            if turn is None:
                return True
            meter = turn.req.meter
            assert meter is not None
            meter.from_answer(resp)
            status = resp.get("status")
            interrupted = False
            if kind == "response.failed" or status == "failed":
                details = resp.get("error") or (resp.get("status_details") or {}).get("error") or {}
                meter.stream_error = str((details or {}).get("message") or "response failed")
            elif status == "cancelled":
                interrupted = True
            if meter.model is None or conn.api == "realtime":
                meter.model = (
                    resp.get("model") if isinstance(resp.get("model"), str) else None
                ) or conn.model
            conn.turns.remove(turn)
            await self._finish(conn, turn, interrupted=interrupted)
            return True
        if kind == "error":
            # an error before the response started (a bad request): that turn ends as an error
            turn = next((t for t in conn.turns if t.response_id is None), None)
            if turn is not None:
                err: dict[str, Any] = obj["error"] if isinstance(obj.get("error"), dict) else obj
                meter = turn.req.meter
                assert meter is not None
                meter.stream_error = str(err.get("message") or "error event")
                status = obj.get("status")
                conn.turns.remove(turn)
                await self._finish(
                    conn, turn, interrupted=False, http_status=status if isinstance(status, int) else 400
                )
        return True

    async def _finish(
        self,
        conn: Conn,
        turn: _Turn,
        *,
        interrupted: bool,
        reason: str | None = None,
        http_status: int = 101,
    ) -> UsageEvent | None:
        """Record one response's event (before its last frame goes on) and settle its reservation."""
        proxy = self.proxy
        req = turn.req
        meter = req.meter
        assert meter is not None
        if meter.model is None and conn.model:
            meter.model = conn.model
        if reason and interrupted:
            req.reason = reason
        event = await proxy.record_call(
            req,
            conn.backend,
            http_status=http_status,
            status="error" if http_status >= 400 else None,
            interrupted=interrupted,
            ttft_ms=turn.ttft_ms,
        )
        if event is not None:
            if event.model:
                self._remember(conn, event.model)
            if req.admission is not None:
                proxy.recorder.settle_later(req.admission, event)
        elif req.admission is not None:
            await proxy._release(req)
        return event

    def _remember(self, conn: Conn, model: str) -> None:
        memo = self._last_model
        for key in (self._memo_key(conn), (conn.backend,)):
            memo[key] = model
            memo.move_to_end(key)
        while len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)
