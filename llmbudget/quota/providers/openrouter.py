"""The `openrouter` kind, written exactly as a third-party plugin would be.

It is registered through the `llmbudget.providers` entry point in pyproject.toml, not in
llmbudget's built-in table, and uses only the public plugin helpers of
`llmbudget.quota.providers.base`. OpenRouter has a free metadata call, `GET /api/v1/key`:
`data.limit` (USD, null for no limit), `data.usage` (USD used), `data.limit_remaining`.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from llmbudget.quota.providers.base import api_key, reading_from_response, url, utcnow
from llmbudget.quota.readings import QuotaReading
from llmbudget.quota.settings import ProviderConfig

if TYPE_CHECKING:
    import aiohttp


class OpenRouterProvider:
    kind = "openrouter"
    default_base = "https://openrouter.ai"

    async def probe(self, account: ProviderConfig, session: aiohttp.ClientSession) -> list[QuotaReading]:
        key = api_key(account, "OPENROUTER_API_KEY")
        async with session.get(
            url(account, self.default_base, "/api/v1/key"), headers={"authorization": f"Bearer {key}"}
        ) as resp:
            body = await resp.read()
            r = reading_from_response(
                account, status=resp.status, headers=resp.headers, body=body, now=utcnow(), secrets=(key,)
            )
        if resp.status != 200:
            return [r]
        r.reason = None
        try:
            data = json.loads(body.decode("utf-8", "replace"))["data"]
            if not isinstance(data, dict):
                raise TypeError("data is not an object")
        except (ValueError, KeyError, TypeError) as e:
            r.add_reason(f"/api/v1/key answer is not the documented shape ({type(e).__name__})")
            return [r]
        limit, usage, remaining = (_usd(data.get(k), k, r) for k in ("limit", "usage", "limit_remaining"))
        r.limit_usd, r.usage_usd = limit, usage
        if limit is not None:
            r.credit_usd = (
                remaining if remaining is not None else (limit - usage if usage is not None else None)
            )
        else:
            r.status = "allowed"  # a key without a credit limit: usable, no headroom figure
        r.extra.update(
            {
                k: data[k]
                for k in (
                    "is_free_tier",
                    "limit_reset",
                    "usage_daily",
                    "usage_weekly",
                    "usage_monthly",
                    "rate_limit",
                )
                if k in data
            }
        )
        return [r]


def _usd(v: object, name: str, r: QuotaReading) -> Decimal | None:
    if v is None:
        return None
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        r.add_reason(f"{name}: not a USD amount ({v!r})")
        return None
    return d if d.is_finite() else None
