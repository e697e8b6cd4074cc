"""The WebSocket relay: OpenAI's Responses API over WebSocket and the Realtime API, metered per response.

A client upgrades `/{backend}/v1/responses` (what Codex's built-in provider tries first) or
`/{backend}/v1/realtime?model=...`. Before the upgrade is accepted the request goes through the same
steps as an HTTP call: its headers give the attribution (`X-LLMBudget-*`, `attribution.rules`,
known clients such as Codex's `originator` / `session-id`), a virtual key is resolved and replaced
by the backend's own key, and the budget gate is asked whether this client may spend at all. A
refusal is an HTTP answer to the upgrade in the protocol's error shape (429 at a budget limit),
never an accepted socket that closes at once. Then the relay opens the upstream WebSocket and, once
it is up, accepts the client's with the upstream's subprotocol and headers.

Frames pass both ways one by one, in order, text and binary unchanged. Each side's pings are
answered on that side (ASGI carries no ping frames). A close from either side is passed to the
other with its code and reason; an upstream that vanishes without a close frame closes the client
with 1011.

Metering: each `response.create` the client sends opens a turn (the Realtime server's own
responses, e.g. after voice activity, open one at `response.created`). The budget gate admits each
turn with the request's model and output limit; a turn refused mid-connection gets an `error`
event in OpenAI's shape (`status` 429, as Codex reads it) and the connection closes with 1008.
`response.completed` / `response.failed` / `response.incomplete` (Responses) and `response.done`
(Realtime) carry the usage: one `UsageEvent` per response, recorded (audit line and ledger, as for
HTTP calls) before that frame is passed on, then the reservation is settled. A connection that
ends mid-response records the open turn as `interrupted` with what was seen (reported usage, else
estimates from the request and the text streamed so far).

Gemini Live (`BidiGenerateContent`) and every other WebSocket path are refused before the upgrade
with a 4xx naming what is relayed, so clients fall back at once. The URL's query (where keys
travel) is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import aiohttp
from multidict import CIMultiDict

from ..admission import Admission
from ..events import UsageEvent
from ..origin import origin_authority
from ..pricing.normalize import openai_realtime_usage
from . import paths
from .base import _TEXT_RE, BadRequest, output_limit
from .openai import OpenAIMeter, ResponsesMeter
from .protocols import OPENAI_METERED, MeteredProtocol
from .proxy import ProxyRequest, _send_error

if TYPE_CHECKING:
    from .proxy import Proxy, Receive, Scope, Send

log = logging.getLogger("llmbudget.proxy")

#: client handshake headers that belong to the client's connection, never forwarded upstream
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "origin",
        "accept-encoding",
    }
)
#: upstream handshake answer headers not passed to the client (its own handshake sets them)
_ANSWER_DROP = frozenset(
    {
        b"connection",
        b"upgrade",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
        b"transfer-encoding",
        b"date",
        b"server",
        b"keep-alive",
    }
)
#: server events worth parsing (every other frame passes with a substring check only)
_INTERESTING = (
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
#: the largest frame taken from the upstream (a client's limit is uvicorn's `ws_max_size`)
MAX_FRAME = 64 * 1024 * 1024
#: upstream answers to an upgrade that mean "no WebSocket here" (passed on as 426 Upgrade Required)
_NO_WEBSOCKET = frozenset({400, 404, 405, 426, 501})
#: close codes that may not be sent in a close frame (RFC 6455 7.4.1)
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})
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
class _Conn:
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


def _deny_send(scope: Scope, send: Send) -> Send:
    """A `send` that answers the upgrade with an HTTP response (ASGI's `websocket.http.response`)
    instead of accepting it; without that extension a close before accept (HTTP 403)."""
    supported = "websocket.http.response" in (scope.get("extensions") or {})

    async def deny(message: Any) -> None:
        kind = message["type"]
        if supported:
            await send({**message, "type": "websocket." + kind})
        elif kind == "http.response.start":
            await send({"type": "websocket.close", "code": 1008})

    return deny


def _query_model(query: str) -> str | None:
    for part in query.split("&"):
        if part.startswith("model="):
            value = unquote_plus(part[6:]).strip()
            return value[:200] or None
    return None


def _close_code(code: Any, default: int = 1000) -> int:
    """A code that may go in a close frame: the peer's own, else `default`."""
    if isinstance(code, int) and 1000 <= code <= 4999 and code not in _UNSENDABLE:
        return code
    return default


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


class WebSocketRelay:
    """The ASGI handler for WebSocket scopes under a backend prefix (called by `Proxy.__call__`)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        #: (backend, key, agent, session) -> the model its last response used: the upgrade's budget
        #: check prices a reconnecting client's calls at that model
        self._last_model: OrderedDict[tuple[Any, ...], str] = OrderedDict()

    # ---------------------------------------------------------------- entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first.get("type") != "websocket.connect":
            return
        deny = _deny_send(scope, send)
        proxy = self.proxy
        try:
            where = paths.read_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
        except paths.PathRefused as e:
            await _send_error(deny, OPENAI_METERED, 400, str(e), "invalid_path")
            return
        name, rest = where.backend, where.rest
        route = proxy._routes.get(name)
        if route is None:
            await proxy.unknown_backend(scope, deny)
            return
        backend, protocol = route
        host = origin = ""
        for k, v in scope["headers"]:
            if k == b"host":
                host = v.decode("latin-1")
            elif k == b"origin":
                origin = v.decode("latin-1")
        if origin and origin_authority(origin) != host.strip().lower():
            # a web page may open a WebSocket to any address (no CORS): never let it spend
            log.info("proxy_ws_refused backend=%s path=%s reason=cross_site", name, rest)
            await _send_error(
                deny,
                protocol,
                403,
                "llmbudget: cross-site WebSocket refused (Origin is not this server)",
                "cross_site",
            )
            return
        api = protocol.websocket_api(rest)
        if api is None:
            refusal = protocol.websocket_refusal(rest)
            message = (
                refusal
                or f"llmbudget relays WebSockets only for OpenAI /v1/responses and /v1/realtime, not {rest!r} "
                f"on a {protocol.name} backend"
            )
            log.info("proxy_ws_refused backend=%s path=%s reason=not_relayed", name, rest)
            # 426: Codex falls back to HTTPS at once on it (any other refusal is retried first)
            await _send_error(deny, protocol, 400 if refusal else 426, message, "websocket_not_supported")
            return
        prepared = await proxy.client_side(scope, name, backend, protocol, deny)
        if prepared is None:
            return
        headers, attribution, has_key, query, _ctype, _length = prepared
        for h in _HANDSHAKE:
            headers.popall(h, None)
        protocols = [
            p.strip()
            for k, v in scope["headers"]
            if k == b"sec-websocket-protocol"
            for p in v.decode("latin-1").split(",")
            if p.strip()
        ]
        conn = _Conn(
            backend=name,
            protocol=protocol,
            api=api,
            path=rest,
            attribution=attribution,
            headers=headers,
            query=query,
            has_key=has_key,
            model=_query_model(query) if api == "realtime" else None,
        )
        gate = proxy.services.gate
        if gate is not None and not await self._admit_upgrade(gate, conn, deny):
            return
        upstream = await self._connect(conn, protocols, deny)
        if upstream is None:
            return
        answer = [
            (k.lower(), v)
            for k, v in (upstream._response.raw_headers if upstream._response is not None else ())
            if k.lower() not in _ANSWER_DROP and not k.lower().startswith(b"set-cookie")
        ]
        await send({"type": "websocket.accept", "subprotocol": upstream.protocol, "headers": answer})
        log.info("proxy_ws_open backend=%s path=%s api=%s", name, rest, api)
        await self._relay(conn, upstream, receive, send)

    # ---------------------------------------------------------------- before the upgrade
    def _memo_key(self, conn: _Conn) -> tuple[Any, ...]:
        a = conn.attribution
        return (conn.backend, a.get("key"), a.get("agent"), a.get("session"))

    def _turn_req(self, conn: _Conn, request: dict[str, Any], model: str | None) -> ProxyRequest:
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

    async def _admit_upgrade(self, gate: Any, conn: _Conn, deny: Send) -> bool:
        """Refuse the upgrade when this client may not spend now (a pause, a budget at its limit).

        The model is the URL's (Realtime), else the one this client's last response used here.
        Nothing stays reserved: each response is admitted on its own when it is asked for.
        """
        model = (
            conn.model or self._last_model.get(self._memo_key(conn)) or self._last_model.get((conn.backend,))
        )
        req = self._turn_req(conn, {}, model)
        assert req.meter is not None
        req.meter._est_input = 1  # the smallest call: refused only when nothing is left
        req.meter.max_output_tokens = 1
        if not await self.proxy._admit(gate, req, deny):
            log.info("proxy_ws_refused backend=%s path=%s reason=budget", conn.backend, conn.path)
            return False
        if req.admission is not None:
            if req.admission.fallback_backend:
                # a budget's fallback cannot move a WebSocket: refuse, the client's HTTP call falls back
                await self.proxy._release(req)
                await _send_error(
                    deny,
                    conn.protocol,
                    429,
                    req.admission.message or req.admission.notice or "budget exhausted",
                    "budget_exceeded",
                )
                return False
            await self.proxy._release(req)
        return True

    async def _connect(
        self, conn: _Conn, protocols: list[str], deny: Send
    ) -> aiohttp.ClientWebSocketResponse | None:
        proxy = self.proxy
        assert proxy.session is not None, "Proxy.startup() was not called (lifespan off?)"
        req = self._turn_req(conn, {}, conn.model)
        req.query = conn.query
        url, headers = proxy._upstream(req, conn.backend)
        headers = headers.copy()
        headers.popall("Accept-Encoding", None)
        backend = proxy.backends[conn.backend]
        try:
            return await asyncio.wait_for(
                proxy.session.ws_connect(
                    url,
                    headers=headers,
                    protocols=protocols,
                    autoclose=False,
                    autoping=True,
                    max_msg_size=MAX_FRAME,
                    compress=0,
                ),
                timeout=min(backend.timeout_s, 30.0),
            )
        except aiohttp.WSServerHandshakeError as e:
            # an upstream that does not speak WebSocket here: 426, so the client uses HTTP at once
            status = 426 if e.status in _NO_WEBSOCKET else e.status if 400 <= e.status < 600 else 502
            log.warning(
                "proxy_ws_upstream_refused backend=%s path=%s status=%s", conn.backend, conn.path, e.status
            )
            await _send_error(
                deny,
                conn.protocol,
                status,
                f"backend {conn.backend!r} refused the WebSocket upgrade (HTTP {e.status})",
                "upstream_refused",
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning(
                "proxy_ws_connect_failed backend=%s path=%s error=%s",
                conn.backend,
                conn.path,
                type(e).__name__,
            )
            await _send_error(
                deny, conn.protocol, 502, proxy._unreachable(conn.backend, e), "upstream_unreachable"
            )
        return None

    # ---------------------------------------------------------------- the relay
    async def _relay(
        self, conn: _Conn, upstream: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send
    ) -> None:
        to_up = asyncio.ensure_future(self._client_to_upstream(conn, upstream, receive, send))
        to_client = asyncio.ensure_future(self._upstream_to_client(conn, upstream, send))
        try:
            done, _ = await asyncio.wait({to_up, to_client}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            done = set()
        for task in (to_up, to_client):
            if task not in done:
                task.cancel()
        client_code: int | None = None
        upstream_gone = False
        for task in (to_up, to_client):
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    outcome = await task
                except Exception:
                    log.exception("proxy_ws_failed backend=%s path=%s", conn.backend, conn.path)
                    outcome = None
                if task is to_up and isinstance(outcome, int):
                    client_code = outcome
                if task is to_client and outcome is True:
                    upstream_gone = True
        # every response still open ends here: recorded as interrupted with what was seen
        for turn in list(conn.turns):
            await self._finish(conn, turn, interrupted=True)
        conn.turns.clear()
        if not upstream.closed:
            code = _close_code(client_code) if conn.closing is None else 1000
            with contextlib.suppress(Exception):
                await asyncio.wait_for(upstream.close(code=code), 5)
        if client_code is None and not upstream_gone and conn.closing is None:
            # the upstream task ended first without closing the client (cannot happen normally)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1011})
        log.info(
            "proxy_ws_closed backend=%s path=%s client_code=%s upstream_code=%s",
            conn.backend,
            conn.path,
            client_code,
            conn.upstream_code,
        )

    async def _client_to_upstream(
        self, conn: _Conn, upstream: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send
    ) -> int | None:
        """Copy client frames upstream; returns the client's close code when it disconnects."""
        while True:
            msg = await receive()
            kind = msg["type"]
            if kind == "websocket.disconnect":
                code = msg.get("code")
                return int(code) if isinstance(code, int) else 1005
            if kind != "websocket.receive":
                continue
            text = msg.get("text")
            if text is not None:
                if '"response.create"' in text and not await self._open_turn(conn, text, send):
                    await self._refused_close(conn, upstream, send)
                    return None
                await upstream.send_str(text)
            else:
                await upstream.send_bytes(msg.get("bytes") or b"")

    async def _upstream_to_client(
        self, conn: _Conn, upstream: aiohttp.ClientWebSocketResponse, send: Send
    ) -> bool:
        """Copy upstream frames to the client; True when the upstream closed (or vanished)."""
        while True:
            msg = await upstream.receive()
            t = msg.type
            if t is aiohttp.WSMsgType.TEXT:
                text: str = msg.data
                if any(marker in text for marker in _INTERESTING):
                    if not await self._server_event(conn, text, send, upstream):
                        return True
                else:
                    self._seen_text(conn, text)
                await send({"type": "websocket.send", "text": text})
            elif t is aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": msg.data})
            elif t is aiohttp.WSMsgType.CLOSE:
                code = conn.upstream_code = _close_code(msg.data, 1000)
                reason = (msg.extra or "")[:120]
                for turn in list(conn.turns):
                    await self._finish(conn, turn, interrupted=True)
                conn.turns.clear()
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(upstream.close(code=code), 5)
                return True
            elif t in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                log.warning("proxy_ws_upstream_cut backend=%s path=%s", conn.backend, conn.path)
                for turn in list(conn.turns):
                    await self._finish(
                        conn, turn, interrupted=True, reason="the upstream connection was lost"
                    )
                conn.turns.clear()
                with contextlib.suppress(Exception):
                    await send(
                        {
                            "type": "websocket.close",
                            "code": 1011,
                            "reason": "llmbudget: upstream connection lost",
                        }
                    )
                return True

    # ---------------------------------------------------------------- turns and budgets
    async def _open_turn(self, conn: _Conn, text: str, send: Send) -> bool:
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
        self, gate: Any, conn: _Conn, turn: _Turn, send: Send, event_id: Any = None
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

    async def _refused_close(
        self, conn: _Conn, upstream: aiohttp.ClientWebSocketResponse, send: Send
    ) -> None:
        """Close the client's side after a refusal (the relay then closes the upstream's)."""
        code, reason = conn.closing or (1008, "llmbudget: refused")
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code, "reason": reason})

    @staticmethod
    async def _send_quietly(send: Send, text: str) -> None:
        with contextlib.suppress(Exception):
            await send({"type": "websocket.send", "text": text})

    def _seen_text(self, conn: _Conn, text: str) -> None:
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

    def _turn_for(self, conn: _Conn, response_id: Any) -> _Turn | None:
        if isinstance(response_id, str):
            for turn in conn.turns:
                if turn.response_id == response_id:
                    return turn
        for turn in conn.turns:
            if turn.response_id is None:
                return turn
        return conn.turns[0] if conn.turns else None

    async def _server_event(
        self, conn: _Conn, text: str, send: Send, upstream: aiohttp.ClientWebSocketResponse
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
        conn: _Conn,
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

    def _remember(self, conn: _Conn, model: str) -> None:
        memo = self._last_model
        for key in (self._memo_key(conn), (conn.backend,)):
            memo[key] = model
            memo.move_to_end(key)
        while len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)
