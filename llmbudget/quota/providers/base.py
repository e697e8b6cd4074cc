"""The provider plugin interface and the helpers every probe (built-in or plugin) uses.

A provider kind is any object with:

    kind: str
    async def probe(self, account: ProviderConfig, session: aiohttp.ClientSession) -> list[QuotaReading]

registered under the `llmbudget.providers` entry point group (the entry point's name is the
kind; its value a class, instantiated without arguments, or an instance). The probe makes one
minimal call, never raises for an HTTP answer (a 401 is a reading with `key_valid=False`),
and may raise for a connection failure; the caller cuts it at `probe_timeout_s`.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ...errors import LLMBudgetError
from ..headers import parse_rate_limit_headers
from ..readings import QuotaReading
from ..settings import ProviderConfig

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import aiohttp


@runtime_checkable
class ProviderPlugin(Protocol):
    """What a provider kind implements."""

    kind: str

    async def probe(self, account: ProviderConfig, session: aiohttp.ClientSession) -> list[QuotaReading]:
        """One minimal call for `account`; readings with `source='probe'`."""
        ...


class MissingKey(LLMBudgetError):
    """The account's `api_key_env` is unset or empty."""

    code = "missing_key"


def utcnow() -> datetime:
    return datetime.now(UTC)


def api_key(account: ProviderConfig, default_env: str | None = None) -> str:
    """The account's key from its `api_key_env` (or the kind's usual variable); MissingKey when unset."""
    env = account.api_key_env or default_env
    if not env:
        raise MissingKey("no api_key_env configured for this account")
    value = os.environ.get(env, "").strip()
    if not value:
        raise MissingKey(f"no API key: ${env} is not set")
    return value


def url(account: ProviderConfig, default_base: str, path: str) -> str:
    """`base_url` (or the kind's default) joined with `path`, without doubling a `/v1`."""
    base = (account.base_url or default_base).rstrip("/")
    for prefix in ("/v1beta", "/v1", "/api/v1"):
        if base.endswith(prefix) and path.startswith(prefix + "/"):
            path = path[len(prefix) :]
            break
    return base + path


_SECRETISH = re.compile(
    r"(sk-[A-Za-z0-9_*-]{6,}|xai-[A-Za-z0-9_*-]{6,}|AIza[A-Za-z0-9_*-]{6,}|llmb-[A-Za-z0-9_*-]{6,})"
)


def scrub(text: str, *secrets: str) -> str:
    """Remove anything key-shaped (and the given secrets) from a provider's error text."""
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    return _SECRETISH.sub("[redacted]", text)


def error_message(body: bytes | str, *secrets: str) -> str:
    """The human message of a provider's JSON error body (OpenAI, Anthropic, Google shapes), scrubbed."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    msg: object = None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("type") or err.get("status")
        elif isinstance(err, str):
            msg = err
    if not isinstance(msg, str) or not msg:
        msg = text.strip().replace("\n", " ")
    clean = scrub(str(msg), *secrets)
    return clean[:160] + ("..." if len(clean) > 160 else "")


def reading_from_response(
    account: ProviderConfig,
    *,
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    now: datetime,
    secrets: tuple[str, ...] = (),
) -> QuotaReading:
    """A probe reading from an HTTP answer: rate-limit headers, key validity, and an error reason."""
    r = parse_rate_limit_headers(
        headers, now=now, backend=account.name, source="probe", provider=account.kind, http_status=status
    )
    if r is None:
        r = QuotaReading(
            timestamp=now, backend=account.name, provider=account.kind, source="probe", http_status=status
        )
    if status in (401, 403):
        r.key_valid = False
        r.add_reason(f"HTTP {status}: {error_message(body, *secrets)}")
    elif 200 <= status < 300:
        r.key_valid = True
        if not r.has_data:
            r.add_reason("no rate-limit headers in the response")
    else:
        r.add_reason(f"HTTP {status}: {error_message(body, *secrets)}")
    return r


def unknown(account: ProviderConfig, reason: str, now: datetime | None = None) -> QuotaReading:
    """An UNKNOWN reading for an account that gave no answer."""
    return QuotaReading(
        timestamp=now or utcnow(), backend=account.name, provider=account.kind, source="probe", reason=reason
    )
