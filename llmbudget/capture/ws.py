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
import logging
from typing import Any
from urllib.parse import unquote_plus

import aiohttp

from ..admission import Gate
from ..origin import origin_authority
from . import paths
from .asgi import Receive, Scope, Send, send_error
from .protocols import OPENAI_METERED
from .proxy import Proxy
from .ws_turns import INTERESTING, Conn, TurnMeter

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
#: the largest frame taken from the upstream (a client's limit is uvicorn's `ws_max_size`)
MAX_FRAME = 64 * 1024 * 1024
#: upstream answers to an upgrade that mean "no WebSocket here" (passed on as 426 Upgrade Required)
_NO_WEBSOCKET = frozenset({400, 404, 405, 426, 501})
#: close codes that may not be sent in a close frame (RFC 6455 7.4.1)
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})


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


class WebSocketRelay(TurnMeter):
    """The ASGI handler for WebSocket scopes under a backend prefix (called by `Proxy.__call__`);
    what it meters per response is its base's (`llmbudget/capture/ws_turns.py`)."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy)
        #: the proxy this relay serves WebSocket upgrades for (it builds the relay, `Proxy(websockets=...)`)
        self.server = proxy

    # ---------------------------------------------------------------- entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first.get("type") != "websocket.connect":
            return
        deny = _deny_send(scope, send)
        proxy = self.server
        try:
            where = paths.read_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
        except paths.PathRefused as e:
            await send_error(deny, OPENAI_METERED, 400, str(e), "invalid_path")
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
            await send_error(
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
            await send_error(deny, protocol, 400 if refusal else 426, message, "websocket_not_supported")
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
        conn = Conn(
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
    async def _admit_upgrade(self, gate: Gate, conn: Conn, deny: Send) -> bool:
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
                await send_error(
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
        self, conn: Conn, protocols: list[str], deny: Send
    ) -> aiohttp.ClientWebSocketResponse | None:
        proxy = self.server
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
            await send_error(
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
            await send_error(
                deny, conn.protocol, 502, proxy._unreachable(conn.backend, e), "upstream_unreachable"
            )
        return None

    # ---------------------------------------------------------------- the relay
    async def _relay(
        self, conn: Conn, upstream: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send
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
        self, conn: Conn, upstream: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send
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
        self, conn: Conn, upstream: aiohttp.ClientWebSocketResponse, send: Send
    ) -> bool:
        """Copy upstream frames to the client; True when the upstream closed (or vanished)."""
        while True:
            msg = await upstream.receive()
            t = msg.type
            if t is aiohttp.WSMsgType.TEXT:
                text: str = msg.data
                if any(marker in text for marker in INTERESTING):
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
