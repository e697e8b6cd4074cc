"""Built-in provider kinds that probe with one minimal completion call (max_tokens 1)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..headers import parse_go_duration
from ..readings import QuotaReading
from ..settings import ProviderConfig
from .base import api_key, error_message, reading_from_response, unknown, url, utcnow

if TYPE_CHECKING:
    import aiohttp

_PROMPT = "."


async def _probe_call(
    account: ProviderConfig,
    session: aiohttp.ClientSession,
    endpoint: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    key: str,
    model: str | None,
) -> tuple[QuotaReading, int, bytes]:
    """POST one minimal call and read the answer into a reading (the key scrubbed from any error text)."""
    async with session.post(endpoint, json=body, headers=headers) as resp:
        data = await resp.read()
        r = reading_from_response(
            account, status=resp.status, headers=resp.headers, body=data, now=utcnow(), secrets=(key,)
        )
    r.model = model
    return r, resp.status, data


class AnthropicProvider:
    """`anthropic-api` (an API key, standard rate-limit headers) and `anthropic-unified` (a subscription
    OAuth token `sk-ant-oat...`, unified 5h/7d utilization headers)."""

    default_base = "https://api.anthropic.com"
    default_model = "claude-haiku-4-5"

    def __init__(self, kind: str = "anthropic-api") -> None:
        self.kind = kind

    async def probe(self, account: ProviderConfig, session: aiohttp.ClientSession) -> list[QuotaReading]:
        key = api_key(account, "ANTHROPIC_API_KEY")
        headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
        if key.startswith("sk-ant-oat"):
            # subscription (Claude Code) tokens authenticate as OAuth bearer tokens
            headers["authorization"] = f"Bearer {key}"
            headers["anthropic-beta"] = "oauth-2025-04-20"
        else:
            headers["x-api-key"] = key
        model = account.model or self.default_model
        body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": _PROMPT}]}
        r, _, _ = await _probe_call(
            account,
            session,
            url(account, self.default_base, "/v1/messages"),
            body,
            headers,
            key=key,
            model=model,
        )
        return [r]


class OpenAICompatibleProvider:
    """`openai`, `xai` and `cost-header-proxy`: a chat completion with max_tokens 1; x-ratelimit-* headers
    (resets as Go durations) and, from a cost-reporting proxy, the per-call USD cost header."""

    def __init__(
        self, kind: str, default_base: str | None, default_model: str | None, key_env: str | None
    ) -> None:
        self.kind = kind
        self.default_base = default_base or ""
        self.default_model = default_model
        self.key_env = key_env

    async def probe(self, account: ProviderConfig, session: aiohttp.ClientSession) -> list[QuotaReading]:
        key = api_key(account, self.key_env)
        model = account.model or self.default_model
        if not model:
            return [unknown(account, "no probe model: set `model:` for this account")]
        body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": _PROMPT}]}
        r, _, _ = await _probe_call(
            account,
            session,
            url(account, self.default_base, "/v1/chat/completions"),
            body,
            {"authorization": f"Bearer {key}"},
            key=key,
            model=model,
        )
        return [r]


class GeminiProvider:
    """`gemini`: generateContent with maxOutputTokens 1. Gemini sends no rate-limit headers; a 429 body
    carries `QuotaFailure` violations and `RetryInfo.retryDelay`, an invalid key a 400 `API_KEY_INVALID`."""

    kind = "gemini"
    default_base = "https://generativelanguage.googleapis.com"
    default_model = "gemini-2.5-flash-lite"

    async def probe(self, account: ProviderConfig, session: aiohttp.ClientSession) -> list[QuotaReading]:
        key = api_key(account, "GEMINI_API_KEY")
        model = account.model or self.default_model
        body = {"contents": [{"parts": [{"text": _PROMPT}]}], "generationConfig": {"maxOutputTokens": 1}}
        # the key goes in a header, never in the URL, so it cannot leak into a log line
        r, status, data = await _probe_call(
            account,
            session,
            url(account, self.default_base, f"/v1beta/models/{model}:generateContent"),
            body,
            {"x-goog-api-key": key},
            key=key,
            model=model,
        )
        if 200 <= status < 300:
            r.status = "allowed"  # the call went through: under quota
            r.reason = None
        else:
            parse_google_error(data, r)
        return [r]


def parse_google_error(body: bytes, r: QuotaReading) -> None:
    """Fill violations, retry delay and key validity from a Google RPC error body (`error.details`)."""
    try:
        err = json.loads(body.decode("utf-8", "replace")).get("error", {})
        details = err.get("details") or []
    except (ValueError, AttributeError):
        r.add_reason("error body is not Google's JSON error shape")
        return
    if not isinstance(details, list):
        return
    for d in details:
        if not isinstance(d, dict):
            continue
        kind = str(d.get("@type", ""))
        if kind.endswith("google.rpc.QuotaFailure"):
            for v in d.get("violations") or []:
                if isinstance(v, dict):
                    r.violations.append(_violation(v))
        elif kind.endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            secs = parse_go_duration(delay) if isinstance(delay, str) else None
            if secs is None:
                r.add_reason(f"RetryInfo.retryDelay not a duration ({delay!r})")
            else:
                r.retry_delay_s = secs
        elif kind.endswith("google.rpc.ErrorInfo") and d.get("reason") in (
            "API_KEY_INVALID",
            "API_KEY_EXPIRED",
        ):
            r.key_valid = False
    if err.get("status") == "PERMISSION_DENIED":
        r.key_valid = False


def _violation(v: dict[str, Any]) -> dict[str, object]:
    out: dict[str, object] = {
        "quota_metric": v.get("quotaMetric"),
        "quota_id": v.get("quotaId"),
        "quota_value": v.get("quotaValue"),
        "dimensions": v.get("quotaDimensions") or {},
    }
    if v.get("description"):
        out["description"] = str(v["description"])[:300]
    if v.get("subject"):
        out["subject"] = str(v["subject"])[:200]
    return out


def anthropic_unified() -> AnthropicProvider:
    return AnthropicProvider("anthropic-unified")


def anthropic_api() -> AnthropicProvider:
    return AnthropicProvider("anthropic-api")


def openai() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("openai", "https://api.openai.com", "gpt-4o-mini", "OPENAI_API_KEY")


def xai() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("xai", "https://api.x.ai", "grok-3-mini", "XAI_API_KEY")


def cost_header_proxy() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("cost-header-proxy", None, None, None)


__all__ = [
    "AnthropicProvider",
    "GeminiProvider",
    "OpenAICompatibleProvider",
    "error_message",
    "parse_google_error",
]
