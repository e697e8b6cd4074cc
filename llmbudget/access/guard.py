"""`AccessGuard`: who may use the server, checked in front of the proxy and the web app.

`AccessGuard` is pure ASGI middleware around the whole app (no BaseHTTPMiddleware: it costs
twice the CPU per request). What it enforces, in this order:

0. **Header size.** A request whose header names and values total more than `MAX_HEADER_BYTES`
   is a 431 before anything else reads them (uvicorn's httptools parser sets no bound of its own).
1. **Host.** A request whose `Host` is not one the server answers to (loopback names, the bind
   address, any IP literal when bound to a wildcard address, `server.allowed_hosts`) is a 421,
   so a DNS-rebinding page cannot reach the API or spend through the proxy. `/healthz` is exempt.
2. **Admin token.** When one is configured (`server.admin_token_env`; `serve` refuses to bind
   off loopback without one) every request that is not for a backend (also behind the
   attribution prefix, `/_llmb/session=S/{backend}/...`), `/healthz` or `/login`
   needs `Authorization: Bearer <token>` or the cookie set by `POST /login`, whatever the
   client's address (a reverse proxy connects from localhost). The cookie holds an HMAC of the
   token, never the token itself.
   The login form counts attempts per client address (an IPv6 client by its /64): after
   `LOGIN_ATTEMPTS` failed ones within `LOGIN_WINDOW_S` it answers 429 with `Retry-After`.
3. **No cross-site actions.** POST/PUT/PATCH/DELETE under `/api` carry no `Origin` other than
   the server's own (403) and, but for a bodiless DELETE, are `application/json` (415), on loopback too:
   an HTML form or a `text/plain` fetch from another site can do neither.

The rules themselves (Host names, the admin token and its cookie) are `AccessPolicy`
(`policy.py`); the login form and its limiter are `login.py`. The proxy's own rules (who gets a
backend's provider key, virtual keys, JSON bodies on metered endpoints) live in `capture/proxy.py`
and read `AccessPolicy.relay_open`.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import quote

from ..capture.errors import error_bytes, guess_protocol
from ..capture.paths import PREFIX
from ..origin import origin_authority
from .login import LoginLimiter, login
from .policy import COOKIE_NAME, AccessPolicy, host_name
from .replies import ASGIApp, Receive, Scope, Send, json_error, redirect, send_body, ws_refuse

_STATE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: the most header bytes (names and values, summed) a request may carry; more is a 431
MAX_HEADER_BYTES = 64 * 1024
_TOO_MANY_HEADERS = f"the request's headers total more than {MAX_HEADER_BYTES // 1024} KiB"

_F = TypeVar("_F", bound=Callable[..., object])


def _size_and_host(headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes | None]:
    """One pass over a request's headers: their total size and the first Host."""
    size = 0
    raw_host = None
    for k, v in headers:
        size += len(k) + len(v)
        if k == b"host" and raw_host is None:
            raw_host = v
    return size, raw_host


def _mark_coroutine_function(fn: _F) -> _F:
    """Let `inspect`/`asyncio.iscoroutinefunction` see a sync ASGI entry as a coroutine function
    (uvicorn and other servers tell ASGI 3 from ASGI 2 that way)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        return cast(_F, mark(fn))
    fn._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
    return fn


class AccessGuard:
    """Pure ASGI middleware enforcing `AccessPolicy` in front of the proxy and the web app."""

    def __init__(
        self,
        app: ASGIApp,
        policy: AccessPolicy,
        backends: Mapping[str, str],
        *,
        proxy: ASGIApp | None = None,
    ) -> None:
        self.app = app
        #: the proxy itself: `/{backend}/...` HTTP calls that pass the header checks go straight to it
        self.proxy_fast = proxy
        self.policy = policy
        #: backend name -> its wire protocol (`kind`)
        self.backends = dict(backends)
        self._cookie = ("=" + policy.cookie_value()) if policy.token is not None else None
        self.logins = LoginLimiter()
        #: raw Host header -> allowed, so the proxy's hot path pays a dict lookup
        self._hosts: dict[bytes, bool] = {}

    def _host_ok(self, raw: bytes) -> bool:
        ok = self.policy.host_allowed(host_name(raw.decode("latin-1")))
        if len(self._hosts) >= 256:  # many distinct Host values: start over rather than grow
            self._hosts.clear()
        self._hosts[raw] = ok
        return ok

    def __getattr__(self, name: str) -> Any:
        # the wrapped app's attributes (services, proxy, web) stay reachable for callers and tests
        return getattr(self.app, name)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The ASGI entry, synchronous on purpose: a proxied call whose headers pass is handed to the
        proxy as the proxy's own coroutine, so no guard or router frame sits in its await chain
        (every suspension of a call resumes through each frame of that chain). Everything else, and
        every refusal, goes through `_guard`."""
        fast = self.proxy_fast
        if (
            fast is not None
            and scope["type"] == "http"
            and scope["path"][1:].partition("/")[0] in self.backends
        ):
            size, raw_host = _size_and_host(scope["headers"])
            if size <= MAX_HEADER_BYTES and raw_host is not None:
                ok = self._hosts.get(raw_host)
                if ok is None:
                    ok = self._host_ok(raw_host)
                if ok:
                    return fast(scope, receive, send)
        return self._guard(scope, receive, send)

    __call__ = _mark_coroutine_function(__call__)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        first = path[1:].partition("/")[0]
        if first in self.backends or first == PREFIX:
            # the proxy's hot path: one pass that sums the headers' size and finds the Host (the
            # attribution prefix, `/_llmb/.../{backend}/...`, reaches nothing but a backend either)
            size, raw_host = _size_and_host(scope["headers"])
            if size > MAX_HEADER_BYTES:
                await self._too_large(scope, send, first)
                return
            if raw_host is not None:
                ok = self._hosts.get(raw_host)
                if ok is None:
                    ok = self._host_ok(raw_host)
                if ok:
                    await self.app(scope, receive, send)
                    return
            await self._refuse_host(scope, send, proxy=True)
            return
        size = 0
        host = origin = auth = cookie = ctype = fetch_site = ""
        for k, v in scope["headers"]:
            size += len(k) + len(v)
            if k == b"host":
                host = v.decode("latin-1")
            elif k == b"origin":
                origin = v.decode("latin-1")
            elif k == b"authorization":
                auth = v.decode("latin-1")
            elif k == b"cookie":
                cookie = v.decode("latin-1")
            elif k == b"content-type":
                ctype = v.decode("latin-1")
            elif k == b"sec-fetch-site":
                fetch_site = v.decode("latin-1").lower()
        if size > MAX_HEADER_BYTES:
            await self._too_large(scope, send, None)
            return
        if path == "/healthz":
            await self.app(scope, receive, send)
            return
        if not self.policy.host_allowed(host_name(host)):
            await self._refuse_host(scope, send, proxy=False)
            return
        method = scope.get("method", "GET")
        # same origin: the Origin's host:port is the Host the browser sent (a reverse proxy must keep Host)
        cross_site = fetch_site == "cross-site" or (
            bool(origin) and origin_authority(origin) != host.strip().lower()
        )
        if kind == "websocket" and (cross_site or first == "login"):
            await ws_refuse(send)
            return
        if first == "login":
            await login(
                self.policy, self.logins, scope, receive, send, cross_site, self._authorized(auth, cookie)
            )
            return
        if self.policy.admin_required and not self._authorized(auth, cookie):
            if kind == "websocket":
                await ws_refuse(send)
                return
            await self._unauthorized(scope, send, first)
            return
        if first == "api" and method in _STATE_METHODS:
            if cross_site:
                await json_error(
                    send,
                    403,
                    f"cross-site request refused: Origin {origin!r} is not this server's own",
                    "cross_site",
                )
                return
            media = ctype.split(";", 1)[0].strip().lower()
            # DELETE is never a "simple" cross-site request (it needs a preflight nobody answers)
            if media != "application/json" and method != "DELETE":
                await json_error(
                    send,
                    415,
                    f"{method} {path} takes Content-Type: application/json"
                    + (f", got {media!r}" if media else ", none was sent"),
                    "unsupported_media_type",
                )
                return
        await self.app(scope, receive, send)

    # ------------------------------------------------------------------ checks
    def _authorized(self, auth: str, cookie: str) -> bool:
        if self.policy.token is None:
            return False  # admin required but no token configured: fail closed
        if auth[:7].lower() == "bearer " and self.policy.check_token(auth[7:].strip()):
            return True
        if cookie and self._cookie is not None:
            for part in cookie.split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE_NAME and hmac.compare_digest(("=" + value).encode(), self._cookie.encode()):
                    return True
        return False

    async def _refuse_host(self, scope: Scope, send: Send, *, proxy: bool) -> None:
        host = ""
        for k, v in scope["headers"]:
            if k == b"host":
                host = v.decode("latin-1")
        shown = host_name(host)[:100] or "(none)"
        message = (
            f"this server does not answer to Host {shown!r}; add it to server.allowed_hosts "
            "if it is one of this server's names"
        )
        if scope["type"] == "websocket":
            await ws_refuse(send)
        elif proxy:
            body = error_bytes(guess_protocol(scope["path"]), 421, message, "misdirected_request")
            await send_body(send, 421, body, b"application/json")
        else:
            await json_error(send, 421, message, "misdirected_request")

    async def _too_large(self, scope: Scope, send: Send, backend: str | None) -> None:
        if scope["type"] == "websocket":
            await ws_refuse(send)
        elif backend is not None:
            protocol = self.backends.get(backend) or guess_protocol(scope["path"])
            body = error_bytes(protocol, 431, _TOO_MANY_HEADERS, "request_header_fields_too_large")
            await send_body(send, 431, body, b"application/json", [(b"connection", b"close")])
        else:
            await json_error(
                send, 431, _TOO_MANY_HEADERS, "request_header_fields_too_large", [(b"connection", b"close")]
            )

    async def _unauthorized(self, scope: Scope, send: Send, first: str) -> None:
        if first not in ("api", "metrics") and scope.get("method") in ("GET", "HEAD"):
            qs = scope.get("query_string", b"")
            target = scope["path"] + ("?" + qs.decode("latin-1") if qs else "")
            await redirect(send, "/login?next=" + quote(target, safe=""))
            return
        message = (
            "the admin token is not configured on the server; set the variable server.admin_token_env names"
            if self.policy.token is None
            else "this needs the admin token: send Authorization: Bearer <token> or log in at /login"
        )
        await json_error(
            send,
            401 if self.policy.token is not None else 503,
            message,
            "unauthorized" if self.policy.token is not None else "unavailable",
            [(b"www-authenticate", b'Bearer realm="llmbudget"')],
        )
