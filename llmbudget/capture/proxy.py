"""The metering proxy: a plain ASGI callable with one shared aiohttp session.

`/{backend}/{rest}` goes to `{base_url}/{rest}` with the query string. Metered calls (see the
per-protocol modules) become one `UsageEvent` each, handed to the ledger's `record()` just before
the answer's last byte is sent: `record()` writes the event's audit line (the write-ahead record,
one `write`) and queues it, so a call the client received survives even `kill -9` of the server.
With `storage.durability: fsync` the last byte also waits for the group fsync covering that line.
Everything else passes through unmetered and is logged.

Streams pass chunk by chunk as they arrive (`iter_any()`): the only exception is OpenAI chat when
llmbudget asked for usage on the client's behalf, where a partial SSE event is held until its end
so that the usage-only chunk can be removed (and a stream compressed against our asking is passed
on decompressed, so that chunk can be found).

Rate-limit headers of every answer become piggyback quota readings, coalesced to the newest per
backend (and its newest error) and stored once a second off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..admission import Admission, CallInfo
from ..attribution_table import HEADER_FIELDS
from ..config import BackendConfig
from ..errors import BudgetUnavailable, LLMBudgetError
from ..events import UsageEvent, new_id
from ..keys import KeyRing
from ..origin import origin_authority
from ..quota.piggyback import PendingReading, piggyback_reading
from ..quota.readings_log import store_reading
from ..services import AccessRules, OverheadMeter, Services
from ..store.keys import KeyStore
from ..wire import KEY_HEADERS, RATE_PREFIXES, WireProtocol, protocol_for
from . import openai, paths
from .base import BadRequest, CallMeter
from .clients import Attributor
from .encoding import decode_body, feed_encoded, stream_decoder
from .guard import StreamGuard
from .protocols import PROTOCOLS, MeteredProtocol, guess_metered
from .record import CallRecorder, Target

log = logging.getLogger("llmbudget.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: headers that belong to one connection, never forwarded (RFC 9110 7.6.1) plus those we recompute
_HOP = frozenset(
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
_REQ_DROP = _HOP | {b"host", b"content-length"}
#: every header a client's key may travel in (whichever protocol's: a client may send any backend's)
_KEY_HEADERS = KEY_HEADERS
_KEY_HEADER_NAMES = tuple(sorted(h.decode("latin-1") for h in KEY_HEADERS))
#: request headers `client_side` looks at (every other header is forwarded untouched)
_CLIENT_SPECIAL = _REQ_DROP | _KEY_HEADERS | {b"origin", b"sec-fetch-site", b"content-type"}
#: `X-LLMBudget-*` request header (lower case) -> attribution field, from the attribution table
_ATTR_HEADERS: dict[bytes, str] = dict(HEADER_FIELDS)
#: response headers that carry quota signals (parsed by `llmbudget.quota.headers`): every protocol's
_RATE_PREFIXES_B = RATE_PREFIXES
_VK_PREFIX = b"llmb-"
_NEEDS_KEY = (
    "llmbudget: this server needs a virtual key (Authorization: Bearer llmb-...; "
    "create one with `llmbudget keys create NAME`) or your own provider key"
)
_ADMIN_NOT_A_KEY = (
    "llmbudget: the admin token is not a provider key and is never forwarded; use a virtual key (llmb-...)"
)
_NEEDS_JSON = "llmbudget: metered endpoints take Content-Type: application/json"
_CROSS_SITE = (
    "llmbudget: a request from another site's page gets no provider key from this server; "
    "send your own key or a virtual key"
)
#: unmetered endpoints that cost nothing, open to a virtual key for any method (token counting, moderation)
_FREE_SUFFIXES = ("/messages/count_tokens", ":countTokens", "/moderations", "/responses/input_tokens")
#: methods that only read: a virtual key may use them on any path of its backends
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: aiohttp adds its own User-Agent unless told not to (only when the client sent none)
_NO_UA = ("User-Agent",)
#: pending piggyback quota readings are parsed and stored this often (the newest per backend wins)
READING_INTERVAL_S = 1.0
#: the longest value an attribution header (`X-LLMBudget-*`) may have, in characters
MAX_ATTRIBUTION_CHARS = 256


def parse_tags(value: str) -> dict[str, str]:
    """`k=v,k=v` into a dict; items without `=` become `{item: ""}`; whitespace trimmed."""
    tags: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        k, _, v = item.partition("=")
        if k.strip():
            tags[k.strip()] = v.strip()
    return tags


@dataclass(slots=True)
class ProxyRequest:
    """A client request as the proxy holds it, ready to be sent to any backend (the fallback seam)."""

    method: str
    #: path after the backend prefix, with its leading slash
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    #: the wire protocol of the backend the client called
    proto: MeteredProtocol
    backend: str
    meter: CallMeter | None
    attribution: dict[str, Any] = field(default_factory=dict)
    has_key: bool = False
    event_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    notice: str | None = None
    admission: Admission | None = None
    fallback: bool = False
    #: why the call failed (a broken upstream answer, an unreachable backend): the event's `reason`
    reason: str | None = None
    #: perf_counter when the request went upstream and when its answer's last byte arrived (0: not yet)
    upstream_start: float = 0.0
    upstream_end: float = 0.0

    @property
    def protocol(self) -> str:
        """The name of the call's wire protocol (`openai`, `anthropic`, `gemini`)."""
        return self.proto.name


#: translate(proxy, request, target_backend, send) -> recorded event; plugged in for cross-protocol fallback
Translator = Callable[["Proxy", ProxyRequest, str, Send], Awaitable[UsageEvent | None]]


class Proxy:
    """The ASGI callable serving every configured backend prefix."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.backends: dict[str, BackendConfig] = dict(services.config.backends)
        #: backend -> (its config, its wire protocol): what a request needs, found with one lookup
        self._routes: dict[str, tuple[BackendConfig, MeteredProtocol]] = {
            n: (b, PROTOCOLS[b.kind]) for n, b in self.backends.items()
        }
        #: backend -> what its calls' events name and are priced as
        self._targets: dict[str, Target] = {n: Target.of_backend(n, b) for n, b in self.backends.items()}
        #: the one path from a finished call to its event and settled admission
        self.recorder = CallRecorder(services.ledger, services.prices, services.gate, source="proxy")
        self.session: aiohttp.ClientSession | None = None
        self._timeouts = {
            n: aiohttp.ClientTimeout(total=None, sock_connect=min(b.timeout_s, 30.0), sock_read=b.timeout_s)
            for n, b in self.backends.items()
        }
        #: backend -> [newest error, newest response] seen since the last store
        self._readings: dict[str, list[PendingReading | None]] = {}
        #: Gemini backends: "ok" or "error", the state the last pending reading said
        self._gemini_state: dict[str, str] = {}
        self._reading_task: asyncio.Task[None] | None = None
        #: metered calls being forwarded now; with more than one, events are built and written in batches
        self._inflight = 0
        self._batch: list[tuple[ProxyRequest, str, dict[str, Any], asyncio.Future[UsageEvent | None]]] = []
        self.max_body = int(services.config.server.max_body_mb * 1024 * 1024)
        #: attribution.rules and known agent clients: fill what X-LLMBudget-* headers left unset
        self.attributor = Attributor.from_config(getattr(services.config, "attribution", None))
        #: backend -> `host:port` of its base_url, named when it cannot be reached (never path or query)
        self._where = {n: host_port(b.base_url) for n, b in self.backends.items()}
        #: llmbudget.access.AccessPolicy; without one (a bare Proxy) the plain-loopback rules apply
        self.access: AccessRules | None = services.access
        self.relay_open: bool = self.access is None or self.access.relay_open
        from .ws import WebSocketRelay

        #: `/{backend}/...` WebSocket upgrades (Responses API over WebSocket, Realtime)
        self.websockets = WebSocketRelay(self)
        #: llmbudget.web.metrics.Metrics when the app serves /metrics (observes the proxy's overhead)
        self.metrics: OverheadMeter | None = services.metrics
        self.keyring: KeyRing | None = services.keyring
        if self.keyring is None:
            try:
                self.keyring = KeyRing(KeyStore(services.ledger))
            except LLMBudgetError:  # a ledger without tables for keys: virtual keys are refused
                self.keyring = None

    # ---------------------------------------------------------------- lifecycle
    async def startup(self) -> None:
        """Open the shared upstream session (called from the app's lifespan)."""
        if self.session is None:
            connector = aiohttp.TCPConnector(
                limit=2000, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300
            )
            # auto_decompress off: bytes pass through exactly as the upstream encoded them.
            # No cookie jar: the session is shared by every client, so a cookie one client's
            # answer set must never ride along with another client's call (Set-Cookie still
            # reaches the client that got it; its own Cookie header is forwarded as sent).
            self.session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._reading_task = asyncio.create_task(self._reading_loop())

    async def shutdown(self) -> None:
        """Finish background work, store pending quota readings, close the session."""
        await self.recorder.drain()
        if self._reading_task is not None:
            self._reading_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading_task
            self._reading_task = None
        await self._store_readings()
        if self.session is not None:
            await self.session.close()
            self.session = None

    # ---------------------------------------------------------------- ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websockets(scope, receive, send)
            return
        try:
            where = paths.read_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
        except paths.PathRefused as e:
            await _send_error(send, self._protocol_of(scope), 400, str(e), "invalid_path")
            log.info("proxy_bad_path reason=%s", e)
            return
        name, rest = where.backend, where.rest
        route = self._routes.get(name)
        if route is None:
            await self.unknown_backend(scope, send)
            return
        backend, protocol = route
        prepared = await self.client_side(scope, name, backend, protocol, send)
        if prepared is None:
            return
        headers, attribution, has_key, query, ctype, length = prepared
        try:
            body = await _read_body(receive, length, self.max_body)
        except _TooLarge as e:
            await _send_error(send, protocol, 413, str(e), "request_too_large")
            log.info("proxy_body_too_large backend=%s path=%s", name, rest)
            return
        method = scope["method"]
        try:
            meter = protocol.make_meter(rest, method, body, query)
        except BadRequest as e:
            await _send_error(send, protocol, e.status, str(e), e.code)
            log.info("proxy_bad_request backend=%s path=%s reason=%s", name, rest, e)
            return
        if meter is not None and not _is_json(ctype):
            # a web page can post text/plain or a form cross-site without asking: never let it spend
            await _send_error(send, protocol, 415, _NEEDS_JSON, "unsupported_media_type")
            return
        req = ProxyRequest(
            method=method,
            path=rest,
            query=query,
            headers=headers,
            body=meter.body if meter else body,
            proto=protocol,
            backend=name,
            meter=meter,
            attribution=attribution,
            has_key=has_key,
        )
        if (
            meter is None
            and attribution.get("key") is not None
            and method not in _READS
            and not rest.rstrip("/").endswith(_FREE_SUFFIXES)
        ):
            # images, audio, batches, fine-tuning: billed to the operator's key but never metered, so
            # a virtual key's budget would not hold; its holder can use their own provider key there
            await _send_error(
                send,
                protocol,
                403,
                f"llmbudget: a virtual key makes only metered calls; {method} {rest} is not metered "
                "(send your own provider key for it)",
                "endpoint_not_metered",
            )
            log.info("proxy_key_unmetered_refused backend=%s method=%s path=%s", name, method, rest)
            return
        if meter is None:
            log.info("proxy_unmetered backend=%s method=%s path=%s", name, method, rest)
            await self.passthrough(req, name, send)
            return
        gate = self.services.gate
        if gate is not None:
            clear = getattr(gate, "clear_without_budgets", None)
            if (clear is None or not clear(attribution.get("agent"))) and not await self._admit(
                gate, req, send
            ):
                return
        if req.admission is not None and req.admission.fallback_backend:
            await self.dispatch(req, req.admission.fallback_backend, send, receive)
        else:  # the usual call: its own backend, its own protocol (one frame less than dispatch)
            await self.forward(req, name, send, receive)

    async def _refuse_header(
        self, send: Send, protocol: MeteredProtocol, backend: str, header: bytes
    ) -> None:
        name = header.decode("latin-1")
        await _send_error(
            send,
            protocol,
            400,
            f"header {name}: longer than {MAX_ATTRIBUTION_CHARS} characters",
            "invalid_header",
        )
        log.info("proxy_bad_header backend=%s header=%s", backend, name)

    async def client_side(
        self, scope: Scope, name: str, backend: BackendConfig, protocol: MeteredProtocol, send: Send
    ) -> tuple[CIMultiDict[str], dict[str, Any], bool, str, bytes, bytes | None] | None:
        """Read a request's headers and query as every proxied call (HTTP or WebSocket) needs them.

        Returns (headers to forward, attribution, has_key, query, content-type, content-length), or
        None when the request was refused (the answer already sent through `send`): an attribution
        header too long, a virtual key refused, no key where one is needed. Attribution comes from
        `X-LLMBudget-*`, then `attribution.rules` and known clients, then the virtual key's fixed values.
        """
        attribution: dict[str, Any] = {}
        has_key = False
        key_value: str | None = None
        ctype = b""
        conn_tokens: list[str] = []
        length: bytes | None = None
        origin = host = b""
        cross_site = False
        forwarded: list[tuple[str, str]] = []
        for k, v in scope["headers"]:
            if k in _CLIENT_SPECIAL:  # one set lookup for the usual header, forwarded as it is
                if k in _REQ_DROP:
                    if k == b"host":
                        host = v
                    elif k == b"connection":
                        conn_tokens.extend(t.strip() for t in v.decode("latin-1").lower().split(","))
                    elif k == b"content-length":
                        length = v
                    continue
                if k == b"origin":
                    origin = v
                elif k == b"sec-fetch-site":
                    cross_site = v.strip().lower() == b"cross-site"
                elif k == b"content-type":
                    ctype = v
                else:  # a provider key header
                    has_key = True
                    if key_value is None or _VK_PREFIX in v:
                        key_value = v.decode("latin-1")
            elif k.startswith(b"x-llmbudget-"):
                if (
                    len(v) > MAX_ATTRIBUTION_CHARS
                    and len(v.decode("utf-8", "replace")) > MAX_ATTRIBUTION_CHARS
                ):
                    await self._refuse_header(send, protocol, name, k)
                    return None
                attr = _ATTR_HEADERS.get(k)
                if attr == "tags":
                    attribution["tags"] = parse_tags(v.decode("utf-8", "replace"))
                elif attr is not None:
                    attribution[attr] = v.decode("utf-8", "replace").strip() or None
                continue  # attribution (and any other llmbudget header) is never forwarded
            forwarded.append((k.decode("latin-1"), v.decode("latin-1")))
        headers: CIMultiDict[str] = CIMultiDict(forwarded)
        if self.attributor is not None:
            self.attributor.fill(scope["headers"], attribution)
        for token in conn_tokens:  # headers the Connection header names are hop-by-hop too
            if token not in ("keep-alive", "close", ""):
                headers.popall(token, None)
        query = scope.get("query_string", b"").decode("latin-1")
        if query and ("key=" in query):  # Gemini's `?key=`, taken from a request to any backend
            for p in query.split("&"):
                if p.startswith("key="):
                    has_key = True
                    if key_value is None or p.startswith("key=llmb-"):
                        key_value = p[4:]
        if key_value is not None and key_value.find("llmb-", 0, 12) >= 0:
            query = await self._virtual_key(key_value, name, headers, query, attribution, send, protocol)
            if query is None:
                return None
            has_key = False  # the virtual key is gone; the backend's own key goes in its place
        elif (
            not has_key
            and backend.api_key_env
            and (
                cross_site
                or (
                    origin
                    and origin_authority(origin.decode("latin-1")) != host.decode("latin-1").strip().lower()
                )
            )
        ):
            # a web page in the operator's browser (a preflight or a JSON fetch) never spends their key
            await _send_error(send, protocol, 403, _CROSS_SITE, "cross_site")
            log.info("proxy_cross_site_refused backend=%s", name)
            return None
        elif not self.relay_open:
            if not has_key:
                await _send_error(send, protocol, 401, _NEEDS_KEY, "unauthorized")
                return None
            if key_value is not None and self.access is not None and self.access.is_admin_token(key_value):
                await _send_error(send, protocol, 401, _ADMIN_NOT_A_KEY, "unauthorized")
                return None
        return headers, attribution, has_key, query, ctype, length

    def _protocol_of(self, scope: Scope) -> MeteredProtocol:
        """The wire protocol of the backend a request names (guessed from the path when none)."""
        route = self._routes.get(scope["path"][1:].partition("/")[0])
        return route[1] if route is not None else guess_metered(scope["path"])

    async def _virtual_key(
        self,
        value: str,
        backend: str,
        headers: CIMultiDict[str],
        query: str,
        attribution: dict[str, Any],
        send: Send,
        protocol: MeteredProtocol,
    ) -> str | None:
        """Resolve a presented `llmb-` key: fix its attribution, drop it from the request; None when refused."""
        secret = value[7:].strip() if value[:7].lower() == "bearer " else value.strip()
        key = await self.keyring.resolve(secret) if self.keyring is not None else None
        state = key.state() if key is not None else "unknown"
        if key is None or state != "active":
            await _send_error(
                send, protocol, 401, f"llmbudget: this virtual key is {state}", "invalid_virtual_key"
            )
            log.info("proxy_key_refused backend=%s state=%s", backend, state)
            return None
        if not key.allows(backend):
            await _send_error(
                send,
                protocol,
                403,
                f"llmbudget: virtual key {key.name!r} may not use backend {backend!r}",
                "backend_not_allowed",
            )
            return None
        for h in _KEY_HEADER_NAMES:
            headers.popall(h, None)
        attribution.update(key.fixed())  # after the headers: what the key fixes, no header overrides
        attribution["key"] = key.name
        if "key=" in query:  # Gemini's `?key=`
            query = "&".join(p for p in query.split("&") if not p.startswith("key="))
        return query

    def call_info(self, req: ProxyRequest) -> CallInfo:
        """What the budget gate is told about a metered call before it is forwarded."""
        meter = req.meter
        assert meter is not None
        target = self._targets[req.backend]
        return CallInfo(
            backend=req.backend,
            protocol=req.proto.name,
            provider=target.provider_of(meter.request_model or ""),
            model=meter.request_model or "",
            est_input_tokens=meter.est_input_tokens(),
            max_output_tokens=meter.max_output_tokens,
            choices=meter.choices,
            service_tier=meter.requested_tier,
            local=target.local,
            streamed=meter.stream,
            **{k: v for k, v in req.attribution.items() if k != "tags"},
            tags=dict(req.attribution.get("tags") or {}),
        )

    async def _admit(self, gate: Any, req: ProxyRequest, send: Send) -> bool:
        """Ask the budget gate; False when the call was refused (the 429 is already sent)."""
        meter = req.meter
        assert meter is not None
        call = self.call_info(req)
        try:
            admission: Admission = await gate.admit(call)
        except Exception as e:  # fail closed: a budget that cannot be checked does not let spend through
            log.error("proxy_gate_failed backend=%s error=%s: %s", req.backend, type(e).__name__, e)
            cause = str(e) if isinstance(e, LLMBudgetError) else f"{type(e).__name__}: {e}"
            await _send_error(
                send,
                req.proto,
                503,
                cause
                if isinstance(e, BudgetUnavailable)
                else f"llmbudget could not check the budget ({cause}); try again",
                "budget_check_failed",
            )
            return False
        if not admission.allowed:
            message = admission.message or admission.notice or "budget exhausted"
            extra = [(b"x-llmbudget-request-id", req.event_id.encode())]
            if admission.retry_after_s is not None:
                extra.append((b"retry-after", str(int(admission.retry_after_s)).encode()))
            if admission.notice:
                extra.append((b"x-llmbudget-notice", _header_safe(admission.notice)))
            req.reason = message  # the refusal's reason, shown with the event (dashboard: recent refusals)
            await self.record_call(
                req,
                req.backend,
                http_status=admission.status or 429,
                status="blocked",
                interrupted=False,
                upstream_reached=False,
            )
            await _send_error(send, req.proto, admission.status or 429, message, "budget_exceeded", extra)
            return False
        # nothing reserved (no budget applies, pause check only): nothing to settle or release later
        req.admission = admission if admission.reservation_id or admission.fallback_backend else None
        if admission.fallback_backend:
            req.fallback = True
            req.notice = admission.notice
            if admission.fallback_model:
                req.body = meter.set_model(admission.fallback_model)
                req.path = meter.upstream_path(req.path)
        return True

    # ---------------------------------------------------------------- dispatch (the fallback seam)
    async def dispatch(
        self, req: ProxyRequest, target: str, send: Send, receive: Receive | None = None
    ) -> None:
        """Serve `req` on backend `target`; a different protocol goes through a registered translator."""
        route = self._routes.get(target)
        if route is None:
            await _send_error(
                send, req.proto, 502, f"fallback backend {target!r} is not configured", "bad_fallback"
            )
            await self._release(req)
            return
        protocol = route[1]
        if protocol is not req.proto:
            translators = self.services.translators
            translate: Translator | None = translators.get((req.proto.name, protocol.name))
            if translate is None:
                await _send_error(
                    send,
                    req.proto,
                    502,
                    f"fallback backend {target!r} speaks {protocol.name}, this call is {req.proto.name} "
                    "and no translator is installed",
                    "bad_fallback",
                )
                await self._release(req)
                return
            event = await translate(self, req, target, send)
            if event is not None and req.admission is not None:
                await self.recorder.settle(req.admission, event)
            return
        await self.forward(req, target, send, receive)

    def _upstream(self, req: ProxyRequest, backend_name: str) -> tuple[URL, CIMultiDict[str]]:
        backend = self.backends[backend_name]
        # the decoded path the meters matched, encoded once: exactly what was matched goes upstream
        url = backend.base_url + paths.encode(req.path) + ("?" + req.query if req.query else "")
        headers = req.headers
        if not req.has_key and backend.api_key_env:
            key = os.environ.get(backend.api_key_env)
            if key:
                headers = headers.copy()
                # the target's protocol: the call's own (a translated call builds its own request)
                protocol = req.proto
                headers[protocol.upstream_key_header] = protocol.upstream_key_scheme + key
        if "accept-encoding" not in headers or req.meter is not None:
            # Metered: usage must be readable, so ask for an uncompressed answer (a client always
            # accepts identity). A client that sent no Accept-Encoding gets identity too, where
            # aiohttp would add its own `gzip, deflate` (setting it here beats skip_auto_headers,
            # which costs a multidict copy per request).
            headers = headers.copy() if headers is req.headers else headers
            headers["Accept-Encoding"] = "identity"
        return URL(url, encoded=True), headers

    async def forward(
        self, req: ProxyRequest, target: str, send: Send, receive: Receive | None = None
    ) -> None:
        """Send `req` to `target` (same protocol), stream or buffer the answer, meter it."""
        assert self.session is not None, "Proxy.startup() was not called (lifespan off?)"
        meter = req.meter
        assert meter is not None
        url, headers = self._upstream(req, target)
        req.upstream_start = time.perf_counter()
        self._inflight += 1
        try:
            resp = await self.session.request(
                req.method,
                url,
                headers=headers,
                data=req.body,
                allow_redirects=False,
                timeout=self._timeouts[target],
                skip_auto_headers=None if "user-agent" in headers else _NO_UA,
            )
        except BaseException as e:
            self._inflight -= 1
            if not isinstance(e, aiohttp.ClientError | TimeoutError | OSError):
                raise  # cancelled (the client went away) or a bug: nothing to answer
            await self._connect_failed(req, target, send, e)
            return
        protocol = req.proto
        try:
            if resp.status < 400 or not protocol.quota_in_error_body:  # else noted with its body
                self._note_rate_headers(target, protocol, resp)
            if protocol.call_id is not None and protocol.call_id_header is not None:
                # the id Claude Code's logs lead to as well, so an import never counts this call twice
                req.event_id = protocol.call_id(resp.headers.get(protocol.call_id_header)) or req.event_id
            out_headers = _response_headers(resp.raw_headers)
            out_headers.append((b"x-llmbudget-request-id", req.event_id.encode()))
            if req.notice:
                out_headers.append((b"x-llmbudget-notice", _header_safe(req.notice)))
            ctype = resp.headers.get("Content-Type", "")
            if resp.status < 400 and (meter.stream or ctype.startswith("text/event-stream")):
                await self._stream(req, target, resp, out_headers, send, receive)
                return
            await self._buffered(req, target, resp, out_headers, send)
        finally:
            self._inflight -= 1
            resp.release()
            if req.upstream_end and self.metrics is not None:
                # what the proxy added: the whole call minus the wait on the upstream
                self.metrics.observe_overhead(
                    max(0.0, time.perf_counter() - req.started - (req.upstream_end - req.upstream_start))
                )

    async def _buffered(
        self,
        req: ProxyRequest,
        target: str,
        resp: aiohttp.ClientResponse,
        out_headers: list[tuple[bytes, bytes]],
        send: Send,
    ) -> None:
        meter = req.meter
        assert meter is not None
        try:
            body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            await self._connect_failed(req, target, send, e, started=True)
            return
        req.upstream_end = time.perf_counter()
        status: str | None = None
        if resp.status >= 400 and req.proto.quota_in_error_body:
            # Gemini's quota is in the error body (QuotaFailure, RetryInfo): parsed later, off this path
            plain = decode_body(body, resp.headers.get("Content-Encoding"))
            self._note_rate_headers(target, req.proto, resp, plain[:65536])
        if resp.status < 400:
            plain = decode_body(body, resp.headers.get("Content-Encoding"))
            meter.read_body(plain)
            if not meter.complete and (plain or not body):
                # a 200 whose (readable) body is not the protocol's answer: never passed on as success
                ctype = resp.headers.get("Content-Type", "")
                req.reason = (
                    f"backend {target!r} answered 200 with a body that is not a {req.proto.name} answer"
                )
                log.warning(
                    "proxy_unreadable_answer backend=%s path=%s content_type=%s", target, req.path, ctype
                )
                event = await self.record_call(
                    req, target, http_status=502, status="error", interrupted=False
                )
                await _send_error(
                    send,
                    req.proto,
                    502,
                    f"{req.reason} (Content-Type {ctype or '(none)'!r})",
                    "upstream_bad_answer",
                    [(b"x-llmbudget-request-id", req.event_id.encode())],
                )
                if event is not None and req.admission is not None:
                    self.recorder.settle_later(req.admission, event)
                return
            if not meter.complete:  # an encoding llmbudget cannot read: passed on, usage unknown
                status = "error"
        batched = self._inflight > 1
        if batched:
            event = await self._record_batched(req, target, http_status=resp.status, status=status)
        else:
            event = self._record(
                req, target, http_status=resp.status, status=status, interrupted=False, defer=True
            )
        if event is not None:
            cost = "unpriced" if event.cost_usd is None else _fmt_cost(event.cost_usd)
            out_headers.append((b"x-llmbudget-cost-usd", cost.encode()))
        out_headers = [(k, v) for k, v in out_headers if k != b"content-length"]
        out_headers.append((b"content-length", str(len(body)).encode()))
        if event is not None:
            if not batched:
                self.recorder.record(event)
            await self.recorder.durable()
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": body})
        if event is not None and req.admission is not None:
            self.recorder.settle_later(req.admission, event)

    async def _stream(
        self,
        req: ProxyRequest,
        target: str,
        resp: aiohttp.ClientResponse,
        out_headers: list[tuple[bytes, bytes]],
        send: Send,
        receive: Receive | None,
    ) -> None:
        meter = req.meter
        assert meter is not None
        encoding = resp.headers.get("Content-Encoding")
        decoder = stream_decoder(encoding)
        #: a compressed stream we must filter is decompressed and passed on as identity
        inflate: Any = None
        if isinstance(meter, openai.OpenAIMeter) and meter.hide_usage:
            out_headers = [(k, v) for k, v in out_headers if k != b"content-length"]
            if decoder is False:
                meter.hide_usage = False  # an encoding we cannot read: pass it unchanged, usage unknown
            elif decoder is not None:
                # The upstream compressed although we asked for identity. The client did not ask for
                # usage, so it must not see the usage chunk: send it the stream decompressed (every
                # client accepts identity) with that chunk removed.
                inflate, decoder = decoder, None
                out_headers = [(k, v) for k, v in out_headers if k != b"content-encoding"]
        guard: StreamGuard | None = None
        json_array = bool(getattr(meter, "json_array", False))
        broken = StreamGuard.content_type_problem(
            ctype_of(out_headers).decode("latin-1"), json_array=json_array
        )
        if broken is not None:
            # not the protocol at all: the client gets the protocol's stream with its error event
            out_headers = [
                (k, v)
                for k, v in out_headers
                if k not in (b"content-type", b"content-length", b"content-encoding")
            ]
            out_headers.append((b"content-type", b"application/json" if json_array else b"text/event-stream"))
        elif decoder is None:  # identity (or decompressed for filtering): every line is checked
            guard = StreamGuard(json_array=json_array)
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        ttft: float | None = None
        interrupted = False
        client_gone = False
        #: the call's event once recorded (before the last byte when the stream ends normally)
        event: UsageEvent | None = None
        recorded = False
        task = asyncio.current_task()
        watcher: asyncio.Future[Message] | None = None
        if receive is not None and task is not None:
            # The client hanging up must stop the copy even while the upstream is silent.
            watcher = asyncio.ensure_future(receive())

            def _on_disconnect(f: asyncio.Future[Message]) -> None:
                nonlocal client_gone
                if (
                    not f.cancelled()
                    and f.exception() is None
                    and f.result().get("type") == "http.disconnect"
                ):
                    client_gone = True
                    task.cancel()

            watcher.add_done_callback(_on_disconnect)
        try:
            if broken is None:
                async for chunk in resp.content.iter_any():
                    if inflate is not None:
                        chunk = inflate.decompress(chunk)
                    if guard is not None:
                        chunk, broken = guard.check(chunk)
                    out = meter.feed(chunk) if decoder is None else feed_encoded(meter, decoder, chunk)
                    if out:
                        if ttft is None:
                            ttft = (time.perf_counter() - req.started) * 1000.0
                        if meter.complete and not recorded and broken is None and meter.raw_usage is not None:
                            # The end marker ([DONE], message_stop) is in this chunk: an SDK stops
                            # reading there, before the body's last byte, so the call is recorded now.
                            recorded = True
                            event = await self.record_call(
                                req,
                                target,
                                http_status=resp.status,
                                status="error" if req.reason else None,
                                interrupted=False,
                                ttft_ms=ttft,
                            )
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    if broken is not None:
                        break
            req.upstream_end = time.perf_counter()
            tail = b""
            if broken is None:
                rest = inflate.flush() if inflate is not None else b""
                if guard is not None:
                    held, broken = guard.check(rest) if rest else (b"", None)
                    if broken is None:
                        last, broken = guard.end()
                        held += last
                    rest = held
                tail = meter.feed(rest) if rest else b""
            tail += meter.end()
            if broken is not None:
                req.reason = f"backend {target!r} {broken}"
                log.warning("proxy_bad_stream backend=%s path=%s reason=%s", target, req.path, broken)
                tail += (
                    req.proto.stream_error(
                        b"application/json" if json_array else b"text/event-stream",
                        req.reason,
                        started=guard is not None and guard.started,
                        code="upstream_bad_stream",
                    )
                    or b""
                )
            interrupted = not meter.complete and broken is None
            if not recorded:
                recorded = True
                event = await self.record_call(
                    req,
                    target,
                    http_status=resp.status,
                    status="error" if req.reason else None,
                    interrupted=interrupted,
                    ttft_ms=ttft,
                )
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if not client_gone:
                raise
            meter.end()
            interrupted = not meter.complete  # gone after the end marker: the call completed
            log.info("proxy_client_disconnected backend=%s path=%s", target, req.path)
        except (aiohttp.ClientError, TimeoutError, OSError, zlib.error) as e:
            interrupted = True
            meter.end()
            log.warning("proxy_upstream_cut backend=%s path=%s error=%s", target, req.path, type(e).__name__)
            if not recorded:
                recorded = True
                event = self._record(
                    req, target, http_status=resp.status, status=None, interrupted=True, ttft_ms=ttft
                )
            # Tell the client in its protocol: an SSE error event (SDKs raise on it), else a cut connection.
            note = req.proto.stream_error(
                ctype_of(out_headers),
                f"the upstream {target!r} closed the stream early ({type(e).__name__})",
            )
            if note is not None:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": note, "more_body": False})
        finally:
            if watcher is not None and not watcher.done():
                watcher.remove_done_callback(_on_disconnect)
                watcher.cancel()
            if client_gone and task is not None:
                task.uncancel()  # so the rest of this request (recording) runs normally
        if not recorded:  # the client hung up first
            event = self._record(
                req,
                target,
                http_status=resp.status,
                status="error" if req.reason else None,
                interrupted=interrupted,
                ttft_ms=ttft,
            )
        if event is not None and req.admission is not None:
            self.recorder.settle_later(req.admission, event)

    async def passthrough(self, req: ProxyRequest, target: str, send: Send) -> None:
        """Forward an unmetered request and stream its answer back unchanged."""
        assert self.session is not None, "Proxy.startup() was not called (lifespan off?)"
        url, headers = self._upstream(req, target)
        try:
            resp = await self.session.request(
                req.method,
                url,
                headers=headers,
                data=req.body or None,
                allow_redirects=False,
                timeout=self._timeouts[target],
                skip_auto_headers=None if "user-agent" in headers else _NO_UA,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning(
                "proxy_connect_failed backend=%s path=%s error=%s", target, req.path, type(e).__name__
            )
            await _send_error(send, req.proto, 502, self._unreachable(target, e), "upstream_unreachable")
            return
        try:
            self._note_rate_headers(target, req.proto, resp)
            out_headers = _response_headers(resp.raw_headers)  # no request id: nothing is recorded
            await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
            try:
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError, OSError):
                log.warning("proxy_upstream_cut backend=%s path=%s", target, req.path)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            resp.release()

    async def unknown_backend(self, scope: Scope, send: Send) -> None:
        """404 in the (guessed) protocol's shape, naming the configured backends."""
        names = sorted(self.backends)
        first = scope["path"][1:].partition("/")[0]
        message = (
            f"no backend named {first!r}; configured backends: {', '.join(names) or '(none)'}. "
            "Requests go to /{backend}/{path}."
        )
        await _send_error(send, guess_metered(scope["path"]), 404, message, "unknown_backend")

    def _unreachable(self, target: str, e: BaseException) -> str:
        return f"llmbudget could not reach backend {target!r} at {self._where[target]} ({type(e).__name__})"

    async def _connect_failed(
        self, req: ProxyRequest, target: str, send: Send, e: BaseException, started: bool = False
    ) -> None:
        log.warning("proxy_connect_failed backend=%s path=%s error=%s", target, req.path, type(e).__name__)
        req.reason = self._unreachable(target, e)
        event = await self.record_call(
            req, target, http_status=502, status="error", interrupted=False, upstream_reached=started
        )
        await _send_error(
            send,
            req.proto,
            502,
            req.reason,
            "upstream_unreachable",
            [(b"x-llmbudget-request-id", req.event_id.encode())],
        )
        if started and req.admission is not None and event is not None:
            self.recorder.spawn(self.recorder.settle(req.admission, event))
        else:
            await self._release(req)

    # ---------------------------------------------------------------- events
    def _record(
        self,
        req: ProxyRequest,
        target: str,
        *,
        http_status: int,
        status: str | None,
        interrupted: bool,
        ttft_ms: float | None = None,
        upstream_reached: bool = True,
        defer: bool = False,
    ) -> UsageEvent | None:
        """Build (and unless `defer`, record) the call's event. Never raises: a failure is logged."""
        meter = req.meter
        if meter is None:
            return None
        event = self.recorder.build(
            meter,
            self._targets[target],
            event_id=req.event_id,
            attribution=req.attribution,
            http_status=http_status,
            status=status,
            interrupted=interrupted,
            fallback=req.fallback,
            started=req.started,
            ttft_ms=ttft_ms,
            upstream_reached=upstream_reached,
            reason=req.reason,
        )
        if event is not None and not defer:
            self.recorder.record(event)
        return event

    def _record_batched(self, req: ProxyRequest, target: str, **kw: Any) -> asyncio.Future[UsageEvent | None]:
        """Build and record the call's event with the others that finish in this loop iteration:
        one pass over warm code and one audit write for all of them."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[UsageEvent | None] = loop.create_future()
        batch = self._batch
        batch.append((req, target, kw, fut))
        if len(batch) == 1:
            loop.call_soon(self._flush_batch)
        return fut

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        try:
            self._flush(batch)
        finally:  # whatever happened, no call waits forever for its event
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _flush(
        self, batch: list[tuple[ProxyRequest, str, dict[str, Any], asyncio.Future[UsageEvent | None]]]
    ) -> None:
        events = [
            self._record(req, target, interrupted=False, defer=True, **kw) for req, target, kw, _ in batch
        ]
        kept = [e for e in events if e is not None]
        if kept:
            self.recorder.record_batch(kept)
        for (_, _, _, fut), event in zip(batch, events, strict=True):
            if not fut.done():
                fut.set_result(event)

    async def record_call(
        self,
        req: ProxyRequest,
        target: str,
        *,
        http_status: int,
        status: str | None,
        interrupted: bool,
        ttft_ms: float | None = None,
        upstream_reached: bool = True,
    ) -> UsageEvent | None:
        """Record the call's event and wait until its audit line is as durable as configured.

        Called before the answer's last byte goes out, so an answered call survives a kill. `status`
        None: read from the answer (ok, error, interrupted, fallback).
        """
        event = self._record(
            req,
            target,
            http_status=http_status,
            status=status,
            interrupted=interrupted,
            ttft_ms=ttft_ms,
            upstream_reached=upstream_reached,
        )
        await self.recorder.durable()
        return event

    async def _release(self, req: ProxyRequest) -> None:
        """Give back what the call's admission reserved (it spent nothing)."""
        if req.admission is not None:
            await self.recorder.release(req.admission, req.event_id)

    # ---------------------------------------------------------------- piggyback quota readings
    def _note_rate_headers(
        self, backend: str, protocol: MeteredProtocol, resp: aiohttp.ClientResponse, body: bytes | None = None
    ) -> None:
        """Keep this response's rate-limit headers as the backend's newest pending quota reading.

        Every response is looked at (a scan of its raw headers, a few microseconds); parsing and
        storing happen off the request path in `_reading_loop`, once per READING_INTERVAL_S, for
        the newest response of each backend (and its newest error), so the latest state is never
        lost while a busy proxy writes at most two readings per backend per interval.
        `body` is an error body of a protocol whose quota is in its error bodies (Gemini sends no
        rate-limit headers, its 429 carries the quota).
        """
        raw = resp.raw_headers
        found = False
        for k, _ in raw:
            if k.lower().startswith(_RATE_PREFIXES_B):
                found = True
                break
        status = resp.status
        if not found and body is None:
            if status >= 400 or not protocol.quota_in_error_body:
                return
            # Gemini: a success after nothing or an error says "allowed"; store that state change
            if self._gemini_state.get(backend) == "ok":
                return
            self._gemini_state[backend] = "ok"
        elif body is not None:
            self._gemini_state[backend] = "error"
        # the raw header tuple is immutable: kept as is, decoded and parsed later off this path
        pending = PendingReading(raw if found else (), time.time(), status, body)
        slot = self._readings.get(backend)
        if slot is None:
            self._readings[backend] = slot = [None, None]
        slot[1] = pending
        if status >= 400:
            slot[0] = pending  # the newest error of the interval is kept even if a success follows

    async def _reading_loop(self) -> None:
        while True:
            await asyncio.sleep(READING_INTERVAL_S)
            try:
                await self._store_readings()
            except Exception:
                log.exception("proxy_readings_failed")

    async def _store_readings(self) -> None:
        if not self._readings:
            return
        pending, self._readings = self._readings, {}
        batch: list[tuple[str, PendingReading]] = []
        for backend, (error, newest) in pending.items():
            if error is not None and error is not newest:
                batch.append((backend, error))
            if newest is not None:
                batch.append((backend, newest))
        await asyncio.to_thread(store_piggyback, self.services, batch, self.backends)


def store_piggyback(
    services: Services,
    pending: list[tuple[str, PendingReading]],
    backends: dict[str, BackendConfig] | None = None,
) -> int:
    """Parse and store pending rate-limit signals as `piggyback` quota readings, oldest first."""
    stored = 0
    for backend, item in pending:
        config = backends.get(backend) if backends else None
        protocol = protocol_for(config.kind if config is not None else None)
        try:
            reading = piggyback_reading(backend, protocol, item)
            if reading is None:
                continue
            store_reading(services, reading)
            stored += 1
        except Exception:
            log.exception("proxy_reading_store_failed backend=%s", backend)
    return stored


# -------------------------------------------------------------------- helpers


class _TooLarge(Exception):
    """The request body is over `server.max_body_mb`."""


async def _read_body(receive: Receive, length: bytes | None, limit: int) -> bytes:
    """The whole request body, refused (`_TooLarge`) as soon as it is known to be over `limit` bytes.

    A declared Content-Length is checked before anything is read; a chunked body is counted as
    it arrives, so an oversized body is never held whole.
    """
    too_large = f"request body is larger than server.max_body_mb ({limit / 1048576:g} MB)"
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise _TooLarge(too_large)
    msg = await receive()
    body = msg.get("body", b"")
    if not msg.get("more_body"):
        if len(body) > limit:
            raise _TooLarge(too_large)
        return bytes(body)
    parts = [body]
    size = len(body)
    while msg.get("more_body"):
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge(too_large)
        parts.append(chunk)
    return b"".join(parts)


def _response_headers(raw: Any) -> list[tuple[bytes, bytes]]:
    out = [(k.lower(), v) for k, v in raw]
    named = {t.strip().lower() for k, v in out if k == b"connection" for t in v.split(b",")}
    drop = _HOP | named if named - {b"keep-alive", b"close"} else _HOP
    return [(k, v) for k, v in out if k not in drop]


async def _send_error(
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


def _is_json(ctype: bytes) -> bool:
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


def _header_safe(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


def _fmt_cost(cost: Decimal) -> str:
    return format(cost.normalize(), "f") if cost else "0"
