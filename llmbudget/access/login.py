"""The login form at `/login`: its page, its POST, and the limiter on failed attempts.

A right token earns the strict, HTTP-only cookie that `AccessPolicy.cookie_value` computes (an
HMAC of the token, never the token itself). Failed attempts are counted per client address (an
IPv6 client by its /64): after `LOGIN_ATTEMPTS` within `LOGIN_WINDOW_S` the form answers 429
with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qs

from .policy import COOKIE_NAME, AccessPolicy
from .replies import Receive, Scope, Send, json_error, read_bounded, redirect, send_body

#: failed logins one client address may make within LOGIN_WINDOW_S before /login answers 429
LOGIN_ATTEMPTS = 10
LOGIN_WINDOW_S = 60.0
#: client addresses the login limiter remembers at most (the least recent are forgotten first)
_LOGIN_CLIENTS = 4096
_LOGIN_MAX_BODY = 16 * 1024


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


async def login(
    policy: AccessPolicy,
    limiter: LoginLimiter,
    scope: Scope,
    receive: Receive,
    send: Send,
    cross_site: bool,
    logged_in: bool,
) -> None:
    """Answer a request for `/login` (the guard has checked its Host already)."""
    method = scope.get("method", "GET")
    if scope["path"] != "/login":
        await json_error(send, 404, f"no route {scope['path']}", "not_found")
        return
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    nxt = _safe_next((query.get("next") or ["/"])[0])
    if method in ("GET", "HEAD"):
        if logged_in:  # e.g. a link followed from another site, where the strict cookie was held back
            await redirect(send, nxt)
            return
        await send_body(send, 200, _login_page(nxt, ""), b"text/html; charset=utf-8")
        return
    if method != "POST":
        await json_error(send, 405, f"{method} is not allowed on /login", "method_not_allowed")
        return
    if cross_site:
        await json_error(send, 403, "cross-site login refused", "cross_site")
        return
    client = client_address(scope)
    wait = limiter.retry_after(client)
    if wait > 0:
        seconds = math.ceil(wait)
        page = _login_page(nxt, f"Too many failed logins from your address; try again in {seconds} s.")
        await send_body(
            send, 429, page, b"text/html; charset=utf-8", [(b"retry-after", str(seconds).encode())]
        )
        return
    at = limiter.attempt(client)
    body = await read_bounded(receive, _LOGIN_MAX_BODY)
    if body is None:
        await json_error(send, 413, "the login form is at most 16 KB", "too_large")
        return
    form = parse_qs(body.decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    nxt = _safe_next((form.get("next") or [nxt])[0])
    if policy.token is None or not policy.check_token(token):
        await asyncio.sleep(0.3)  # slows guessing down; the comparison itself is constant-time
        await send_body(send, 401, _login_page(nxt, "Wrong token."), b"text/html; charset=utf-8")
        return
    limiter.succeeded(client, at)
    secure = "; Secure" if scope.get("scheme") == "https" else ""
    cookie = f"{COOKIE_NAME}={policy.cookie_value()}; Path=/; HttpOnly; SameSite=Strict{secure}"
    await redirect(send, nxt, [(b"set-cookie", cookie.encode())])


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
