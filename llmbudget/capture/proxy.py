"""The metering proxy: a plain ASGI callable. Metered calls go upstream on its own lean client
(`llmbudget/capture/upstream.py`); everything else on one shared aiohttp session.

`/{backend}/{rest}` goes to `{base_url}/{rest}` with the query string. Metered calls (see the
per-protocol modules, `llmbudget/capture/protocols.py`) become one `UsageEvent` each, handed to the
ledger's `record()` just before the answer's last byte is sent (`llmbudget/capture/answers.py`):
`record()` writes the event's audit line (the write-ahead record, one `write`) and queues it, so a
call the client received survives even `kill -9` of the server. With `storage.durability: fsync`
the last byte also waits for the group fsync covering that line. Everything else passes through
unmetered and is logged.

Here: the request's way in (path, backend, the client's side in `llmbudget/capture/request.py`,
the meter, the budget gate), the upstream request, the fallback seam and the batched recording
of events. Rate-limit headers of every answer become piggyback quota readings
(`llmbudget/capture/readings.py`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..config import BackendConfig
from ..errors import LLMBudgetError
from ..events import UsageEvent
from ..keys import KeyRing
from ..services import OverheadMeter, Services
from ..store.keys import KeyStore
from . import paths
from .answers import buffered_answer, streamed_answer
from .asgi import (
    ASGIHandler,
    Receive,
    Scope,
    Send,
    TooLarge,
    header_safe,
    host_port,
    is_json,
    read_body,
    response_headers,
    send_error,
)
from .base import BadRequest
from .clients import Attributor
from .protocols import PROTOCOLS, MeteredProtocol, guess_metered
from .proxy_calls import MeteredCalls, Pending
from .readings import RateReadings
from .record import CallRecorder, Target
from .request import MAX_ATTRIBUTION_CHARS, ClientSide, ProxyRequest, parse_tags
from .upstream import Origin, UpstreamPool

__all__ = [
    "MAX_ATTRIBUTION_CHARS",
    "Proxy",
    "ProxyRequest",
    "Receive",
    "Scope",
    "Send",
    "Translator",
    "parse_tags",
]

log = logging.getLogger("llmbudget.proxy")

_NEEDS_JSON = "llmbudget: metered endpoints take Content-Type: application/json"
#: unmetered endpoints that cost nothing, open to a virtual key for any method (token counting, moderation)
_FREE_SUFFIXES = ("/messages/count_tokens", ":countTokens", "/moderations", "/responses/input_tokens")
#: methods that only read: a virtual key may use them on any path of its backends
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: aiohttp adds its own User-Agent unless told not to (only when the client sent none)
_NO_UA = ("User-Agent",)
#: translate(proxy, request, target_backend, send) -> recorded event; plugged in for cross-protocol fallback
Translator = Callable[["Proxy", ProxyRequest, str, Send], Awaitable[UsageEvent | None]]


class Proxy(MeteredCalls):
    """The ASGI callable serving every configured backend prefix."""

    def __init__(
        self, services: Services, *, websockets: Callable[[Proxy], ASGIHandler] | None = None
    ) -> None:
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
        #: metered calls go upstream through their own lean keep-alive pool (`upstream.py`), opened
        #: with the session by `startup()`
        self.upstream: UpstreamPool | None = None
        self._origins = {n: Origin(b.base_url) for n, b in self.backends.items()}
        self._timeouts = {
            n: aiohttp.ClientTimeout(total=None, sock_connect=min(b.timeout_s, 30.0), sock_read=b.timeout_s)
            for n, b in self.backends.items()
        }
        #: piggyback quota readings: every answer's rate-limit signals, stored off the request path
        self.readings = RateReadings(services, self.backends)
        self._note_rate_headers = self.readings.note
        #: metered calls being forwarded now; with more than one, events are built and written in batches
        self._inflight = 0
        self._batch: list[Pending] = []
        self.max_body = int(services.config.server.max_body_mb * 1024 * 1024)
        #: backend -> `host:port` of its base_url, named when it cannot be reached (never path or query)
        self._where = {n: host_port(b.base_url) for n, b in self.backends.items()}
        #: `/{backend}/...` WebSocket upgrades (Responses API over WebSocket, Realtime)
        self.websockets = websockets(self) if websockets is not None else None
        #: llmbudget.web.metrics.Metrics when the app serves /metrics (observes the proxy's overhead)
        self.metrics: OverheadMeter | None = services.metrics
        keyring: KeyRing | None = services.keyring
        if keyring is None:
            try:
                keyring = KeyRing(KeyStore(services.ledger))
            except LLMBudgetError:  # a ledger without tables for keys: virtual keys are refused
                keyring = None
        #: reads a request's headers, attribution and keys (HTTP and WebSocket alike)
        self.client_side = ClientSide(
            # attribution.rules and known agent clients: fill what X-LLMBudget-* headers left unset
            attributor=Attributor.from_config(getattr(services.config, "attribution", None)),
            keyring=keyring,
            access=services.access,
        ).read

    # ---------------------------------------------------------------- lifecycle
    async def startup(self) -> None:
        """Open the shared upstream session and the metered calls' pool (called from the app's lifespan)."""
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
            self.upstream = UpstreamPool()
            self.readings.start()

    async def shutdown(self) -> None:
        """Finish background work, store pending quota readings, close the session and the pool."""
        await self.recorder.drain()
        await self.readings.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.upstream is not None:
            await self.upstream.close()
            self.upstream = None

    # ---------------------------------------------------------------- ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if self.websockets is not None:
                await self.websockets(scope, receive, send)
            else:  # a proxy built without its relay (`llmbudget/app.py` gives it one)
                await send({"type": "websocket.close", "code": 1008})
            return
        try:
            where = paths.read_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
        except paths.PathRefused as e:
            await send_error(send, self._protocol_of(scope), 400, str(e), "invalid_path")
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
            body = await read_body(receive, length, self.max_body)
        except TooLarge as e:
            await send_error(send, protocol, 413, str(e), "request_too_large")
            log.info("proxy_body_too_large backend=%s path=%s", name, rest)
            return
        method = scope["method"]
        try:
            meter = protocol.make_meter(rest, method, body, query)
        except BadRequest as e:
            await send_error(send, protocol, e.status, str(e), e.code)
            log.info("proxy_bad_request backend=%s path=%s reason=%s", name, rest, e)
            return
        if meter is not None and not is_json(ctype):
            # a web page can post text/plain or a form cross-site without asking: never let it spend
            await send_error(send, protocol, 415, _NEEDS_JSON, "unsupported_media_type")
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
            await send_error(
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

    def _protocol_of(self, scope: Scope) -> MeteredProtocol:
        """The wire protocol of the backend a request names (guessed from the path when none)."""
        route = self._routes.get(scope["path"][1:].partition("/")[0])
        return route[1] if route is not None else guess_metered(scope["path"])

    # ---------------------------------------------------------------- dispatch (the fallback seam)
    async def dispatch(
        self, req: ProxyRequest, target: str, send: Send, receive: Receive | None = None
    ) -> None:
        """Serve `req` on backend `target`; a different protocol goes through a registered translator."""
        route = self._routes.get(target)
        if route is None:
            await send_error(
                send, req.proto, 502, f"fallback backend {target!r} is not configured", "bad_fallback"
            )
            await self._release(req)
            return
        protocol = route[1]
        if protocol is not req.proto:
            translators = self.services.translators
            translate: Translator | None = translators.get((req.proto.name, protocol.name))
            if translate is None:
                await send_error(
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

    def _upstream_headers(self, req: ProxyRequest, backend: BackendConfig) -> CIMultiDict[str]:
        headers = req.headers
        if not req.has_key and backend.api_key_env:
            # stripped: a key pasted into an env file often carries its newline along
            key = os.environ.get(backend.api_key_env, "").strip()
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
        return headers

    def _upstream(self, req: ProxyRequest, backend_name: str) -> tuple[URL, CIMultiDict[str]]:
        backend = self.backends[backend_name]
        # the decoded path the meters matched, encoded once: exactly what was matched goes upstream
        url = backend.base_url + paths.encode(req.path) + ("?" + req.query if req.query else "")
        return URL(url, encoded=True), self._upstream_headers(req, backend)

    async def forward(
        self, req: ProxyRequest, target: str, send: Send, receive: Receive | None = None
    ) -> None:
        """Send `req` to `target` (same protocol), stream or buffer the answer, meter it."""
        upstream = self.upstream
        assert upstream is not None, "Proxy.startup() was not called (lifespan off?)"
        meter = req.meter
        assert meter is not None
        origin = self._origins[target]
        # the decoded path the meters matched, encoded once: exactly what was matched goes upstream
        where = origin.base_path + paths.encode(req.path) + ("?" + req.query if req.query else "")
        headers = self._upstream_headers(req, self.backends[target])
        timeout = self._timeouts[target]
        req.upstream_start = time.perf_counter()
        self._inflight += 1
        try:
            resp = await upstream.request(
                origin,
                req.method,
                where or "/",
                headers,
                req.body,
                connect_timeout=timeout.sock_connect or 30.0,
                read_timeout=timeout.sock_read or 600.0,
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
                req.event_id = protocol.call_id(resp.header(protocol.call_id_header)) or req.event_id
            out_headers = response_headers(resp.raw_headers)
            out_headers.append((b"x-llmbudget-request-id", req.event_id.encode()))
            if req.notice:
                out_headers.append((b"x-llmbudget-notice", header_safe(req.notice)))
            ctype = resp.header("Content-Type") or ""
            if resp.status < 400 and (meter.stream or ctype.startswith("text/event-stream")):
                await streamed_answer(self, req, target, resp, out_headers, send, receive)
                return
            await buffered_answer(self, req, target, resp, out_headers, send)
        finally:
            self._inflight -= 1
            resp.release()
            if req.upstream_end and self.metrics is not None:
                # what the proxy added: the whole call minus the wait on the upstream
                self.metrics.observe_overhead(
                    max(0.0, time.perf_counter() - req.started - (req.upstream_end - req.upstream_start))
                )

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
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            # ValueError: aiohttp refusing a header value with a line break (a configured key)
            log.warning(
                "proxy_connect_failed backend=%s path=%s error=%s", target, req.path, type(e).__name__
            )
            await send_error(send, req.proto, 502, self._unreachable(target, e), "upstream_unreachable")
            return
        try:
            self._note_rate_headers(target, req.proto, resp)
            out_headers = response_headers(resp.raw_headers)  # no request id: nothing is recorded
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
        await send_error(send, guess_metered(scope["path"]), 404, message, "unknown_backend")
