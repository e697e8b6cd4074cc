"""How a finished call's meter becomes one priced `UsageEvent`: its status, its provider, counts that
can be trusted (estimates for what a cut stream never reported), the price, and a field the event
refuses replaced rather than the call lost."""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

from ..errors import ValidationError
from ..events import MAX_COST_USD, MAX_TEXT, MAX_TOKENS, TOKEN_FIELDS, UsageEvent, utcnow
from ..pricing import provider_for
from ..pricing.normalize import ZERO_USAGE, TokenUsage
from .base import CallMeter

log = logging.getLogger("llmbudget.capture")


def guess_provider(model: str, base_url: str | None, kind: str) -> str:
    """The price-book provider of a call to `base_url`, from its host, then protocol, then model.

    A loopback host is not taken as proof that calls are free: a gateway on 127.0.0.1 (LiteLLM,
    a corporate proxy) may front paid models. Only `local: true` (or `wrap(local=True)`) prices at
    $0; otherwise the provider is guessed from the protocol and model, and an unknown model stays
    `unpriced`.
    """
    provider = str(provider_for(model, base_url, kind))
    if provider == "local":
        provider = str(provider_for(model, None, kind))
    return provider


def call_status(meter: CallMeter, *, http_status: int, interrupted: bool, fallback: bool) -> str:
    """ok | error | interrupted | fallback for a call that reached the provider."""
    if http_status >= 400 or meter.stream_error:
        return "error"
    if interrupted:
        return "interrupted"
    return "fallback" if fallback else "ok"


def build_event(
    meter: CallMeter,
    *,
    event_id: str,
    backend: str,
    provider: str,
    prices: Any,
    local: bool,
    attribution: dict[str, Any],
    http_status: int,
    status: str,
    started: float,
    ttft_ms: float | None,
    source: str,
    upstream_reached: bool = True,
) -> UsageEvent:
    """The call's event: tokens as the provider reported them, estimated only for cut streams, priced.

    A cut stream keeps every count the provider already reported: input reported at the start of a
    stream (Anthropic `message_start`, Gemini's first chunks) is final and used as it is, with its
    cached and cache-write parts. Only what was never reported is estimated: input from the request
    (characters of its text / 4, plus 4 per message), output from the generated text seen so far
    (characters / 4). A reported output count is a snapshot that lags the text streamed after it,
    so the larger of it and the estimate is kept.
    """
    try:
        usage = meter.usage()
    except Exception:  # the normalizers never raise; this guards the request path all the same
        log.exception("usage_unreadable backend=%s", backend)
        usage = None
    reason = None
    if usage is not None:
        usage, reason = trusted_usage(usage, meter)
    if status == "interrupted" and upstream_reached:
        usage = fill_cut_stream(usage, meter)
    tokens: dict[str, Any] = usage.as_dict() if usage is not None else {}
    allowed = None if meter.max_output_tokens is None else meter.max_output_tokens * meter.choices
    if allowed is not None and int(tokens.get("output_tokens") or 0) > allowed:
        # recorded and charged as reported: the provider bills what it produced
        reason = (reason + "; " if reason else "") + (
            f"output_tokens {tokens['output_tokens']} exceeds the {allowed} the request allowed "
            f"(max output {meter.max_output_tokens} x {meter.choices} choice{'s' if meter.choices != 1 else ''}); "
            "charged in full"
        )
    model = meter.model or meter.request_model or ""
    now = utcnow()
    cost: Decimal | None = None
    price_status = "unpriced"
    if prices is not None:
        # priced before the event is built (the same book and rule as `PriceBook.price_event`, without
        # building and validating the event twice on the request path)
        result = prices.cost(
            model, usage or ZERO_USAGE, provider=provider, at=now, local=local or provider == "local"
        )
        cost, price_status = result.cost_usd, result.status
    if cost is not None and cost > MAX_COST_USD:
        reason = (
            reason + "; " if reason else ""
        ) + f"cost ${cost} beyond the bound of ${MAX_COST_USD:,} per call"
        cost, price_status = None, "unpriced"
    fields: dict[str, Any] = dict(
        backend=backend,
        model=model,
        id=event_id,
        timestamp=now,
        provider=provider,
        request_model=meter.request_model,
        **tokens,
        **{k: v for k, v in attribution.items() if k != "tags" and v is not None},
        tags=dict(attribution.get("tags") or {}),
        status=status,
        http_status=http_status,
        streamed=meter.stream,
        duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
        ttft_ms=None if ttft_ms is None else round(ttft_ms, 3),
        source=source,
        cost_usd=cost,
        price_status=price_status,
        reason=reason,
    )
    try:
        return UsageEvent(**fields)
    except ValidationError as e:
        return _salvage(fields, e)


def _clean_text(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    text: str = v.replace("\x00", "\ufffd")[:MAX_TEXT]
    return text.encode("utf-8", "replace").decode("utf-8")


def _salvage(fields: dict[str, Any], error: ValidationError) -> UsageEvent:
    """Record the call anyway: each field the event refused is replaced, and the reason says which."""
    notes: list[str] = []
    for _ in range(len(fields)):
        name = error.field
        notes.append(str(error))
        if name in TOKEN_FIELDS:
            fields[name] = 0
        elif name == "cost_usd":
            fields["cost_usd"], fields["price_status"] = None, "unpriced"
        elif name in ("tags", "units"):
            fields[name] = {}
        elif name in ("duration_ms", "ttft_ms", "http_status", "request_model", "reason", "service_tier"):
            fields[name] = None
        elif name in ("backend", "model", "provider"):
            fields[name] = _clean_text(fields.get(name)) or "unknown"
        elif name in fields:
            fields[name] = _clean_text(fields[name])
        else:
            break
        fields["reason"] = "; ".join(
            filter(None, [fields.get("reason"), f"recorded with a replaced value: {notes[-1]}"])
        )[:MAX_TEXT]
        try:
            return UsageEvent(**fields)
        except ValidationError as e:
            error = e
    raise error


_INT_ONLY = {int}


def trusted_usage(usage: TokenUsage, meter: CallMeter) -> tuple[TokenUsage, str | None]:
    """Replace counts no call can have (negative, over `MAX_TOKENS`, not integers) with what can be trusted.

    Input and output fall back to the estimate from the request and the text seen (as for a cut
    stream); the other counts fall back to 0 and an impossible unit count is dropped. Returns the
    usage and the event's `reason` naming each replaced value and what the upstream reported (None
    when every count was plausible, the usual case: a few comparisons).
    """
    counts = (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.cache_write_1h_tokens,
    )  # the TOKEN_FIELDS
    if (
        not usage.units
        and set(map(type, counts)) == _INT_ONLY
        and min(counts) >= 0
        and max(counts) <= MAX_TOKENS
    ):
        return usage, None  # the usual case: every count a plausible integer
    changes: dict[str, Any] = {}
    notes: list[str] = []
    for name in TOKEN_FIELDS:
        v = getattr(usage, name, 0)
        if type(v) is int and 0 <= v <= MAX_TOKENS:
            continue
        est = {"input_tokens": meter.est_input_tokens, "output_tokens": meter.est_output_tokens}.get(name)
        changes[name] = min(max(int(est()), 0), MAX_TOKENS) if est is not None else 0
        notes.append(f"{name}={_shown(v)} ({'estimated' if est else 'recorded as'} {changes[name]})")
    units = dict(usage.units)
    if units and any(type(v) is not int or not 0 <= v <= MAX_TOKENS for v in units.values()):
        kept = {k: v for k, v in units.items() if type(v) is int and 0 <= v <= MAX_TOKENS}
        notes += [f"units.{k}={_shown(v)} (dropped)" for k, v in units.items() if k not in kept]
        changes["units"] = kept
    if not changes:
        return usage, None
    reason = f"upstream reported impossible counts: {', '.join(notes)} (bound {MAX_TOKENS:,})"
    log.warning("usage_untrusted %s", reason)
    return usage.with_counts(**changes), reason


def _shown(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 30 else text[:12] + f"...({len(text)} digits)"


def fill_cut_stream(usage: TokenUsage | None, meter: CallMeter) -> TokenUsage:
    """A cut stream's usage: what the provider reported, estimates only for what it never reported."""
    est_out = meter.est_output_tokens()
    if usage is None or usage.input_tokens == 0:
        base = usage or ZERO_USAGE
        return base.with_counts(
            input_tokens=meter.est_input_tokens(), output_tokens=max(base.output_tokens, est_out)
        )
    if est_out > usage.output_tokens:
        return usage.with_counts(output_tokens=est_out)
    return usage
