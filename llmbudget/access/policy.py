"""The access rules of one server: which Host names it answers to, the admin token and its cookie.

`AccessPolicy` is built from the `server:` section and the bind address; `check_server_access`
is what `serve` runs before it binds. Nothing here speaks ASGI: the guard (`guard.py`) and the
login form (`login.py`) ask these rules.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import MutableMapping
from dataclasses import dataclass

from ..config import ServerConfig
from ..errors import ConfigError

COOKIE_NAME = "llmbudget_admin"
_COOKIE_LABEL = b"llmbudget admin cookie v1"
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


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
    def from_config(
        cls, server: ServerConfig, environ: MutableMapping[str, str] | None = None
    ) -> AccessPolicy:
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
