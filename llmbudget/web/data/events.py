"""The events page and the explain view: the newest events, and why one call cost what it did."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ...errors import NotFound
from ...events import TOKEN_FIELDS, UsageEvent
from ...money import decimal_str
from ...services import Services
from ...timeranges import parse_since
from .spend import usd

EVENT_FILTERS = ("agent", "session", "backend", "model", "status", "user", "team", "tier", "provider")


def events_list(services: Services, params: dict[str, str], limit: int = 100) -> list[dict[str, Any]]:
    """Newest events matching exact-match filters (and `since`)."""
    filters = {k: v for k, v in params.items() if k in EVENT_FILTERS and v}
    since = None
    if params.get("since"):
        since = parse_since(params["since"], zone=services.config.zone(), option="since")
    evs = services.ledger.query(since=since, filters=filters or None, limit=limit)
    return [_event_row(e) for e in evs]


def _event_row(e: UsageEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "timestamp": e.timestamp.isoformat(),
        "agent": e.agent,
        "session": e.session,
        "backend": e.backend,
        "model": e.model,
        "status": e.status,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "tokens": e.input_tokens + e.output_tokens,
        "cost_usd": usd(e.cost_nano),
        "price_status": e.price_status,
    }


_KINDS = (
    ("input", "input_mtok", "uncached input"),
    ("cached", "cache_read_mtok", "cached input (read)"),
    ("cache_write", "cache_write_mtok", "cache write"),
    ("output", "output_mtok", "output (excl. reasoning)"),
    ("reasoning", "output_mtok", "reasoning (billed as output)"),
)


def explain(services: Services, event_id: str) -> dict[str, Any]:
    """Why a call cost what it did: tokens by kind × the price in force on its date, and the price's source."""
    e = services.ledger.get(event_id)
    if e is None:
        raise NotFound(f"no event {event_id!r}")
    uncached = max(0, e.input_tokens - e.cached_input_tokens - e.cache_write_tokens)
    tokens = {
        "input": uncached,
        "cached": e.cached_input_tokens,
        "cache_write": e.cache_write_tokens,
        "output": max(0, e.output_tokens - e.reasoning_tokens),
        "reasoning": e.reasoning_tokens,
    }
    out: dict[str, Any] = {
        "event": _event_row(e),
        "tokens": {k: e.__getattribute__(k) for k in TOKEN_FIELDS},
        "price_status": e.price_status,
        "cost_usd": usd(e.cost_nano),
        "lines": [],
    }
    if e.price_status == "local":
        out["source"] = "local backend: calls cost $0"
        return out
    info = services.prices.lookup(e.model, provider=e.provider, at=e.timestamp)
    if info is None:
        out["source"] = (
            services.prices.why_unpriced(e.model, provider=e.provider, at=e.timestamp) or "unpriced"
        )
        return out
    out["source"] = info.source
    out["price"] = info.to_dict()
    total = Decimal(0)
    for kind, key, label in _KINDS:
        n = tokens[kind]
        price = getattr(info, key)
        if price is None:
            price = info.input_mtok if kind in ("cached", "cache_write") else info.output_mtok
        if price is None:
            price = Decimal(0)
        line_cost = price * n / Decimal(1_000_000)
        total += line_cost
        out["lines"].append(
            {
                "kind": kind,
                "label": label,
                "tokens": n,
                "price_per_mtok": str(price),
                "cost_usd": decimal_str(line_cost.quantize(Decimal("1E-9"))),
            }
        )
    if info.request_usd:
        total += info.request_usd
        out["lines"].append(
            {
                "kind": "request",
                "label": "per request",
                "tokens": 1,
                "price_per_mtok": None,
                "cost_usd": decimal_str(info.request_usd),
            }
        )
    out["computed_usd"] = decimal_str(total.quantize(Decimal("1E-9")))
    out["tiers_note"] = (
        "tiered price: the whole call pays the tier its input size falls in" if info.tiers else None
    )
    out["effective_from"] = None if info.effective_from is None else info.effective_from.isoformat()
    return out
