"""Who may use the server: the admin token, the Host allow-list and the cross-site rules.

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

The proxy's own rules (who gets a backend's provider key, virtual keys, JSON bodies on metered
endpoints) live in `capture/proxy.py` and read `AccessPolicy.relay_open`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import inspect
import ipaddress
import json
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from .capture.errors import error_bytes, error_payload, guess_protocol
from .capture.paths import PREFIX
from .errors import ConfigError
from .origin import origin_authority
from .web.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE_NAME = "llmbudget_admin"
_COOKIE_LABEL = b"llmbudget admin cookie v1"
_STATE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOGIN_MAX_BODY = 16 * 1024
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
#: failed logins one client address may make within LOGIN_WINDOW_S before /login answers 429
LOGIN_ATTEMPTS = 10
LOGIN_WINDOW_S = 60.0
#: client addresses the login limiter remembers at most (the least recent are forgotten first)
_LOGIN_CLIENTS = 4096
#: the most header bytes (names and values, summed) a request may carry; more is a 431
MAX_HEADER_BYTES = 64 * 1024
_TOO_MANY_HEADERS = f"the request's headers total more than {MAX_HEADER_BYTES // 1024} KiB"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_name(value: str) -> str:
    """The host part of a `Host` header or an origin's authority, lower-cased, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


@dataclass(frozen=True)
class AccessPolicy:
    """The access rules in effect for one server (built from `server:` and the bind address)."""

    bind_host: str
    #: the admin token's bytes; None when none is configured
    token: bytes | None
    #: server.admin_token_env names a variable that is empty or unset
    token_missing: bool
    allowed_hosts: tuple[str, ...]

    @classmethod
    def from_config(cls, server: Any, environ: MutableMapping[str, str] | None = None) -> AccessPolicy:
        env = os.environ if environ is None else environ
        name = server.admin_token_env
        value = env.get(name, "") if name else ""
        return cls(
            bind_host=server.host,
            token=value.encode() if value else None,
            token_missing=bool(name) and not value,
            allowed_hosts=tuple(h.lower().rstrip(".") for h in (server.allowed_hosts or ())),
        )

    @property
    def exposed(self) -> bool:
        """Bound to an address other than loopback."""
        return not is_loopback(self.bind_host)

    @property
    def admin_required(self) -> bool:
        """The API, dashboard and /metrics need the admin token (one is configured, or bound off loopback)."""
        return self.token is not None or self.token_missing or self.exposed

    @property
    def relay_open(self) -> bool:
        """Plain loopback (no admin token configured): a key-less proxied call gets the backend's key, as before.

        Anywhere else only a virtual key earns the operator's provider key; the admin token never does.
        """
        return not self.admin_required

    def cookie_value(self) -> str:
        """The login cookie: an HMAC of the token, so the cookie never holds the token itself."""
        assert self.token is not None
        return hmac.new(self.token, _COOKIE_LABEL, hashlib.sha256).hexdigest()

    def check_token(self, presented: str) -> bool:
        """Constant-time comparison of a presented token with the admin token."""
        if self.token is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.token)

    def is_admin_token(self, header_value: str) -> bool:
        """True when a provider-key header (`Bearer X` or `X`) carries the admin token."""
        if self.token is None:
            return False
        value = header_value[7:] if header_value[:7].lower() == "bearer " else header_value
        return self.check_token(value.strip())

    def host_allowed(self, host: str) -> bool:
        """True when the server answers to `host` (a `Host` header's host part)."""
        if not host:
            return False
        if host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost"):
            return True
        bind = self.bind_host.strip("[]").lower()
        if host == bind:
            return True
        # a rebinding page always sends its own *name*: an IP literal reaches the server itself
        if bind in _WILDCARD_BINDS and _is_ip(host):
            return True
        if is_loopback(host):
            return True
        for allowed in self.allowed_hosts:
            if allowed == "*" or allowed == host:
                return True
            if allowed.startswith("*.") and host.endswith(allowed[1:]):
                return True
        return False


def check_server_access(host: str, admin_token_env: str | None) -> None:
    """Refuse to serve off loopback without an admin token, or with a token variable that is empty."""
    if admin_token_env and not os.environ.get(admin_token_env):
        raise ConfigError(
            f"refusing to start: ${admin_token_env} (server.admin_token_env) is empty or unset; "
            "set it to a long random string",
            key="server.admin_token_env",
        )
    if is_loopback(host):
        return
    if not admin_token_env:
        raise ConfigError(
            f"refusing to listen on {host}: a non-loopback address needs an admin token; "
            "set server.admin_token_env to the name of an environment variable holding one",
            key="server.admin_token_env",
        )


class LoginLimiter:
    """Failed login attempts per client address in a sliding window (one process's memory).

    An attempt counts as failed from the moment it is made and is taken back when the token was
    right, so a burst of concurrent guesses is bounded too.
    """

    def __init__(
        self,
        attempts: int = LOGIN_ATTEMPTS,
        window_s: float = LOGIN_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.clock = clock
        self._failed: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        times = self._failed.get(client)
        if times is None:
            return 0.0
        now = self.clock()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failed[client]
            return 0.0
        return times[0] + self.window_s - now if len(times) >= self.attempts else 0.0

    def attempt(self, client: str) -> float:
        """Count one attempt (as failed until `succeeded`); returns the time it was counted at."""
        now = self.clock()
        times = self._failed.get(client)
        if times is None:
            if len(self._failed) >= _LOGIN_CLIENTS:
                self._forget(now)
            times = self._failed[client] = deque()
        times.append(now)
        return now

    def succeeded(self, client: str, at: float) -> None:
        """The attempt counted at `at` had the right token: it is not a failure."""
        times = self._failed.get(client)
        if times is not None:
            with contextlib.suppress(ValueError):
                times.remove(at)

    def _forget(self, now: float) -> None:
        for name in [c for c, t in self._failed.items() if not t or t[-1] <= now - self.window_s]:
            del self._failed[name]
        while len(self._failed) >= _LOGIN_CLIENTS:
            del self._failed[next(iter(self._failed))]


def client_address(scope: Scope) -> str:
    """Who is asking, for the login limiter: the peer's address (an IPv6 one by its /64 network)."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False))
        except ValueError:
            return host
    return host


def _mark_coroutine_function(fn: Any) -> Any:
    """Let `inspect`/`asyncio.iscoroutinefunction` see a sync ASGI entry as a coroutine function
    (uvicorn and other servers tell ASGI 3 from ASGI 2 that way)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        return mark(fn)
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
            size = 0
            raw_host = None
            for k, v in scope["headers"]:
                size += len(k) + len(v)
                if k == b"host" and raw_host is None:
                    raw_host = v
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
            size = 0
            raw_host = None
            for k, v in scope["headers"]:
                size += len(k) + len(v)
                if k == b"host" and raw_host is None:
                    raw_host = v
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
            await _ws_refuse(send)
            return
        if first == "login":
            await self._login(scope, receive, send, cross_site, self._authorized(auth, cookie))
            return
        if self.policy.admin_required and not self._authorized(auth, cookie):
            if kind == "websocket":
                await _ws_refuse(send)
                return
            await self._unauthorized(scope, send, first)
            return
        if first == "api" and method in _STATE_METHODS:
            if cross_site:
                await _json_error(
                    send,
                    403,
                    f"cross-site request refused: Origin {origin!r} is not this server's own",
                    "cross_site",
                )
                return
            media = ctype.split(";", 1)[0].strip().lower()
            # DELETE is never a "simple" cross-site request (it needs a preflight nobody answers)
            if media != "application/json" and method != "DELETE":
                await _json_error(
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
            await _ws_refuse(send)
        elif proxy:
            body = error_bytes(guess_protocol(scope["path"]), 421, message, "misdirected_request")
            await _send(send, 421, body, b"application/json")
        else:
            await _json_error(send, 421, message, "misdirected_request")

    async def _too_large(self, scope: Scope, send: Send, backend: str | None) -> None:
        if scope["type"] == "websocket":
            await _ws_refuse(send)
        elif backend is not None:
            protocol = self.backends.get(backend) or guess_protocol(scope["path"])
            payload = error_payload(protocol, 431, _TOO_MANY_HEADERS, "request_header_fields_too_large")
            if protocol == "gemini":
                payload["error"]["status"] = (
                    "INVALID_ARGUMENT"  # Google's status for a request it will not read
                )
            body = json.dumps(payload).encode()
            await _send(send, 431, body, b"application/json", [(b"connection", b"close")])
        else:
            await _json_error(
                send, 431, _TOO_MANY_HEADERS, "request_header_fields_too_large", [(b"connection", b"close")]
            )

    async def _unauthorized(self, scope: Scope, send: Send, first: str) -> None:
        if first not in ("api", "metrics") and scope.get("method") in ("GET", "HEAD"):
            qs = scope.get("query_string", b"")
            target = scope["path"] + ("?" + qs.decode("latin-1") if qs else "")
            await _redirect(send, "/login?next=" + quote(target, safe=""))
            return
        message = (
            "the admin token is not configured on the server; set the variable server.admin_token_env names"
            if self.policy.token is None
            else "this needs the admin token: send Authorization: Bearer <token> or log in at /login"
        )
        await _json_error(
            send,
            401 if self.policy.token is not None else 503,
            message,
            "unauthorized" if self.policy.token is not None else "unavailable",
            [(b"www-authenticate", b'Bearer realm="llmbudget"')],
        )

    # ------------------------------------------------------------------ the login form
    async def _login(
        self, scope: Scope, receive: Receive, send: Send, cross_site: bool, logged_in: bool
    ) -> None:
        method = scope.get("method", "GET")
        if scope["path"] != "/login":
            await _json_error(send, 404, f"no route {scope['path']}", "not_found")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        nxt = _safe_next((query.get("next") or ["/"])[0])
        if method in ("GET", "HEAD"):
            if logged_in:  # e.g. a link followed from another site, where the strict cookie was held back
                await _redirect(send, nxt)
                return
            await _send(send, 200, _login_page(nxt, ""), b"text/html; charset=utf-8")
            return
        if method != "POST":
            await _json_error(send, 405, f"{method} is not allowed on /login", "method_not_allowed")
            return
        if cross_site:
            await _json_error(send, 403, "cross-site login refused", "cross_site")
            return
        client = client_address(scope)
        wait = self.logins.retry_after(client)
        if wait > 0:
            seconds = math.ceil(wait)
            page = _login_page(nxt, f"Too many failed logins from your address; try again in {seconds} s.")
            await _send(
                send, 429, page, b"text/html; charset=utf-8", [(b"retry-after", str(seconds).encode())]
            )
            return
        at = self.logins.attempt(client)
        body = await _read_bounded(receive, _LOGIN_MAX_BODY)
        if body is None:
            await _json_error(send, 413, "the login form is at most 16 KB", "too_large")
            return
        form = parse_qs(body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        nxt = _safe_next((form.get("next") or [nxt])[0])
        if self.policy.token is None or not self.policy.check_token(token):
            await asyncio.sleep(0.3)  # slows guessing down; the comparison itself is constant-time
            await _send(send, 401, _login_page(nxt, "Wrong token."), b"text/html; charset=utf-8")
            return
        self.logins.succeeded(client, at)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE_NAME}={self.policy.cookie_value()}; Path=/; HttpOnly; SameSite=Strict{secure}"
        await _redirect(send, nxt, [(b"set-cookie", cookie.encode())])


# -------------------------------------------------------------------- helpers


def _safe_next(value: str) -> str:
    """A local path to go to after login (never another site)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or "\r" in value or "\n" in value:
        return "/"
    return value


def _login_page(nxt: str, error: str) -> bytes:
    err = f'<p class="err">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llmbudget: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}
input,button{{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box;margin:.3rem 0}}
.err{{color:#b00}}</style></head>
<body><h1>llmbudget</h1>{err}
<form method="post" action="/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<input type="hidden" name="next" value="{html.escape(nxt, quote=True)}">
<button type="submit">Log in</button>
</form></body></html>
""".encode()


async def _read_bounded(receive: Receive, limit: int) -> bytes | None:
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


async def _send(
    send: Send, status: int, body: bytes, ctype: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [
        (b"location", location.encode("latin-1", "replace")),
        (b"content-length", b"0"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _json_error(
    send: Send, status: int, message: str, code: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await _send(send, status, body, b"application/json", extra)


async def _ws_refuse(send: Send) -> None:
    # closing before accepting makes the server answer the upgrade with 403
    await send({"type": "websocket.close", "code": 1008})
