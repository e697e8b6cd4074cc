"""A client's request as the proxy reads it: headers, attribution, keys (`ClientSide`), and the
`ProxyRequest` it becomes, ready to be sent to any backend."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from ..admission import Admission
from ..attribution_table import HEADER_FIELDS
from ..config import BackendConfig
from ..events import new_id
from ..keys import KeyRing
from ..origin import origin_authority
from ..services import AccessRules
from ..wire import KEY_HEADERS
from .asgi import HOP, Scope, Send, send_error
from .base import CallMeter
from .clients import Attributor
from .protocols import MeteredProtocol

log = logging.getLogger("llmbudget.proxy")

#: request headers not forwarded: hop-by-hop, and those the upstream request gets anew
REQ_DROP = HOP | {b"host", b"content-length"}
#: every header a client's key may travel in (whichever protocol's: a client may send any backend's)
_KEY_HEADERS = KEY_HEADERS
_KEY_HEADER_NAMES = tuple(sorted(h.decode("latin-1") for h in KEY_HEADERS))
#: request headers `ClientSide.read` looks at (every other header is forwarded untouched)
_CLIENT_SPECIAL = REQ_DROP | _KEY_HEADERS | {b"origin", b"sec-fetch-site", b"content-type"}
#: `X-LLMBudget-*` request header (lower case) -> attribution field, from the attribution table
_ATTR_HEADERS: dict[bytes, str] = dict(HEADER_FIELDS)
_VK_PREFIX = b"llmb-"
_NEEDS_KEY = (
    "llmbudget: this server needs a virtual key (Authorization: Bearer llmb-...; "
    "create one with `llmbudget keys create NAME`) or your own provider key"
)
_ADMIN_NOT_A_KEY = (
    "llmbudget: the admin token is not a provider key and is never forwarded; use a virtual key (llmb-...)"
)
_CROSS_SITE = (
    "llmbudget: a request from another site's page gets no provider key from this server; "
    "send your own key or a virtual key"
)
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


class ClientSide:
    """Reads what every proxied call (HTTP or WebSocket) needs from the client's request."""

    def __init__(
        self, *, attributor: Attributor | None, keyring: KeyRing | None, access: AccessRules | None
    ) -> None:
        #: attribution.rules and known agent clients: fill what X-LLMBudget-* headers left unset
        self.attributor = attributor
        self.keyring = keyring
        #: llmbudget.access.AccessPolicy; without one (a bare Proxy) the plain-loopback rules apply
        self.access = access
        self.relay_open: bool = access is None or access.relay_open

    async def _refuse_header(
        self, send: Send, protocol: MeteredProtocol, backend: str, header: bytes
    ) -> None:
        name = header.decode("latin-1")
        await send_error(
            send,
            protocol,
            400,
            f"header {name}: longer than {MAX_ATTRIBUTION_CHARS} characters",
            "invalid_header",
        )
        log.info("proxy_bad_header backend=%s header=%s", backend, name)

    async def read(
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
                if k in REQ_DROP:
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
            await send_error(send, protocol, 403, _CROSS_SITE, "cross_site")
            log.info("proxy_cross_site_refused backend=%s", name)
            return None
        elif not self.relay_open:
            if not has_key:
                await send_error(send, protocol, 401, _NEEDS_KEY, "unauthorized")
                return None
            if key_value is not None and self.access is not None and self.access.is_admin_token(key_value):
                await send_error(send, protocol, 401, _ADMIN_NOT_A_KEY, "unauthorized")
                return None
        return headers, attribution, has_key, query, ctype, length

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
            await send_error(
                send, protocol, 401, f"llmbudget: this virtual key is {state}", "invalid_virtual_key"
            )
            log.info("proxy_key_refused backend=%s state=%s", backend, state)
            return None
        if not key.allows(backend):
            await send_error(
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
