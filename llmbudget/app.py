"""The one ASGI application `llmbudget serve` runs: the metering proxy beside the JSON API.

The proxy route is a plain ASGI callable (no framework on the hot path);
Starlette serves `/healthz`, `/api/...` and the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .access.guard import AccessGuard
from .access.policy import AccessPolicy
from .budget.factory import install as install_budgets
from .budget.thresholds import ThresholdWatch
from .capture.errors import error_bytes, guess_protocol
from .capture.paths import PREFIX, PathRefused, read_prefix
from .capture.proxy import Proxy
from .capture.translate import anthropic_to_openai_translator
from .capture.ws import WebSocketRelay
from .config import mask_url
from .fanout import LiveHub
from .live_follow import LedgerFollower
from .otel import install_otel
from .quota.probe import ProbeSession
from .services import Services
from .web.api import api_routes, install_error_handlers
from .web.api_budget import serving_enforcer
from .web.dashboard import page_routes
from .web.metrics import install_metrics
from .web.reportpool import close_report_pool

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LLMBudgetApp:
    """Dispatches `/{backend}/...` (and `/_llmb/.../{backend}/...`) to the proxy, a plain ASGI
    callable, and everything else to Starlette."""

    def __init__(self, services: Services, web: Starlette, proxy: Any) -> None:
        self.services = services
        self.web = web
        self.proxy = proxy
        self._backends = frozenset(services.config.backends)
        prefixes = {"", "api", "healthz", "metrics", "static"}
        root_mount = False
        for route in web.routes:
            path = getattr(route, "path", "")
            first = path[1:].partition("/")[0]
            if first.startswith("{") or (path in ("", "/") and not isinstance(route, Route)):
                root_mount = True  # a catch-all: unknown prefixes belong to the web app
            prefixes.add(first)
        self._web_prefixes = frozenset(prefixes)
        self._root_mount = root_mount

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            first = scope["path"][1:].partition("/")[0]
            if first in self._backends:
                await self.proxy(scope, receive, send)
                return
            if first == PREFIX:
                await self._prefixed(scope, receive, send)
                return
            if kind == "websocket":
                await self.web(scope, receive, send)
                return
            if first not in self._web_prefixes and not self._root_mount:
                await self.proxy.unknown_backend(scope, send)
                return
        await self.web(scope, receive, send)

    async def _prefixed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`/_llmb/session=S/agent=A/{backend}/...`: the call `/{backend}/...` attributed to S and A.

        The prefix's values go in as the `X-LLMBudget-Session` / `-Agent` headers the client did not
        send itself, so the proxy's usual order holds: a virtual key's fixed values win, then
        explicit headers, then the prefix, then `attribution.rules` and known clients. The proxy
        reads the rest of the path as it reads any path (`capture/paths.py` parses both). Only a
        configured backend is reached this way; a plain `/{backend}/...` call never comes here.
        """
        try:
            where = read_prefix(scope.get("raw_path") or scope["path"].encode("utf-8"))
        except PathRefused as e:
            await _refuse(scope, send, 400, str(e), "invalid_path")
            return
        if where.backend not in self._backends:
            # (the configured names are not listed: the access guard let this through on its Host alone)
            message = f"no backend named {where.backend[:100]!r}; requests go to /{PREFIX}/session=S/{{backend}}/..."
            await _refuse(scope, send, 404, message, "unknown_backend")
            return
        headers = scope["headers"]
        given = {k for k, _ in headers if k in _PREFIX_HEADERS.values()}
        added = [
            (h, v.encode("utf-8"))
            for f, v in where.attribution.items()
            if (h := _PREFIX_HEADERS[f]) not in given
        ]
        child = {**scope, "path": where.path, "raw_path": where.raw_path, "headers": [*headers, *added]}
        await self.proxy(child, receive, send)


#: the header each attribution-prefix field stands for
_PREFIX_HEADERS = {"session": b"x-llmbudget-session", "agent": b"x-llmbudget-agent"}


async def _refuse(scope: Scope, send: Send, status: int, message: str, code: str) -> None:
    """An error in the (guessed) protocol's shape; a WebSocket upgrade gets it as its HTTP answer
    (ASGI's `websocket.http.response`), or is closed before it is accepted (403) without that."""
    kind = ""
    if scope["type"] == "websocket":
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        kind = "websocket."
    body = error_bytes(guess_protocol(scope["path"]), status, message, code)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": kind + "http.response.start", "status": status, "headers": headers})
    await send({"type": kind + "http.response.body", "body": body})


def build_app(services: Services) -> Any:
    """The ASGI app: requests under a configured backend prefix go to the proxy, the rest to the API.

    The whole app sits behind `AccessGuard` (Host allow-list, admin token, cross-site rules).
    """
    install_budgets(services)  # budgets configured: the gate goes into services.gate
    cfg = services.config
    if cfg.budgets is not None and cfg.budgets.has_budgets():
        # cross-protocol fallback: an Anthropic call served by an OpenAI backend
        services.translators.setdefault(("anthropic", "openai"), anthropic_to_openai_translator)
    policy = services.access
    if not isinstance(policy, AccessPolicy):  # none given (tests and embedders may pass their own)
        policy = AccessPolicy.from_config(services.config.server)
        services.access = policy
    hub = install_live(services)
    install_metrics(services, hub)  # before the proxy, which observes its overhead
    install_otel(services, hub)
    proxy = Proxy(services, websockets=WebSocketRelay)
    if services.probe_session is None:  # quota probes: one session, opened on the first probe
        services.probe_session = ProbeSession()
    probes = services.probe_session

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # one shared upstream session for the process; a clean shutdown flushes every accepted event
        await proxy.startup()
        try:
            yield
        finally:
            await proxy.shutdown()
            await probes.close()
            await asyncio.to_thread(close_report_pool, services)
            await asyncio.to_thread(services.ledger.flush)
            await asyncio.to_thread(close_live, services)

    async def healthz(request: Request) -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "backends": sorted(services.config.backends)}
        if request.query_params.get("ready") in (None, "", "0", "false"):
            return JSONResponse(body)  # liveness: the process answers
        # readiness (a load balancer's check): the ledger and the budget counters answer too
        try:
            await asyncio.wait_for(asyncio.to_thread(_storage_ready, services), timeout=5)
        except Exception as e:
            cause = "storage did not answer within 5 s" if isinstance(e, TimeoutError) else str(e)
            return JSONResponse({**body, "status": "unready", "cause": cause}, status_code=503)
        return JSONResponse({**body, "ready": True})

    web = Starlette(
        routes=[Route("/healthz", healthz), *api_routes(services), *page_routes(services)], lifespan=lifespan
    )

    install_error_handlers(web)
    return AccessGuard(
        LLMBudgetApp(services, web, proxy),
        policy,
        {name: backend.kind for name, backend in services.config.backends.items()},
        proxy=proxy,
    )


def install_live(services: Services) -> Any:
    """The live fan-out (`services.live`) fed by the ledger's record path and the notifier,
    and the alert-threshold watch fed by the fan-out."""
    if services.live is not None:
        return services.live
    cfg = services.config
    redis_url = cfg.live.redis_url or (cfg.budgets.redis_url if cfg.budgets is not None else None)
    hub = LiveHub(redis_url)
    services.live = hub
    on_record = getattr(services.ledger, "on_record", None)
    if on_record is not None:
        on_record.append(hub.publish)
    enforcer = serving_enforcer(services)
    notifier = getattr(enforcer, "notifier", None)
    if notifier is not None:
        notifier.listeners.append(hub.publish_notice)
    watch = ThresholdWatch(
        services.ledger,
        tz=cfg.zone(),
        notifier=notifier,
        pause=lambda agent, reason: enforcer.pause(agent, reason=reason, by="threshold"),
        delay_s=services.ledger.flush_interval_s + 0.1
        if hasattr(services.ledger, "flush_interval_s")
        else 0.3,
    ).start()
    services.threshold_watch = watch
    hub.add_local_listener(watch.on_events)
    hub.add_follower(LedgerFollower(services.ledger).poll)
    hub.start()
    return hub


def close_live(services: Services) -> None:
    """Stop the fan-out and the threshold watch (at shutdown)."""
    parts = (services.threshold_watch, services.live, services.otel)
    services.threshold_watch = None
    services.live = None
    services.otel = None
    for part in parts:
        if part is not None:
            part.close()


def _storage_ready(services: Any) -> None:
    """Raise with the cause when the ledger's database or the budget counters do not answer."""
    probe = getattr(services.ledger, "_probe", None)
    if probe is not None and not probe():
        raise RuntimeError(f"the ledger's database at {mask_url(services.ledger.url)} is unreachable")
    enf = services.enforcer
    if enf is not None and enf.budgets:
        try:
            enf.store.totals(["__ready__"])
        except Exception as e:
            raise RuntimeError(f"budget counters unreachable: {e}") from e
