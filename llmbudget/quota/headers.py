"""Pure parsers for provider rate-limit response headers. They never raise.

`parse_rate_limit_headers(headers, now=...)` reads any mix of these families
(header names are case-insensitive):

- Anthropic unified (subscription plans, Claude Code): `anthropic-ratelimit-unified-status`
  (allowed | allowed_warning | rejected), `-reset`, `-representative-claim`,
  `-fallback-percentage`, `-overage-status`, and per window `-{window}-utilization`
  (fraction 0-1), `-{window}-reset` (unix seconds), `-{window}-status` for ANY window name
  (`5h`, `7d`, `7d_oi`, `7d_sonnet`, `overage`, ...).
- Anthropic API: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
  with RFC 3339 resets (`Z` or an offset), plus `retry-after`.
- OpenAI / xAI / Groq / LiteLLM: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with resets as
  Go durations (`6m0s`, `12ms`, `1h2m3.5s`); `-1` means no limit applies. Bare
  `x-ratelimit-{limit,remaining,reset}` (OpenRouter) count as `requests`, the reset an epoch in ms or s.
- A cost-reporting proxy's per-call USD cost: `x-litellm-response-cost` (LiteLLM),
  `x-llmbudget-cost-usd` (llmbudget itself), `x-request-cost`, `x-cost-usd`; LiteLLM's
  `x-litellm-key-spend` and `x-litellm-key-max-budget` give used and limit USD.
- `retry-after` (seconds or an HTTP date) and `retry-after-ms`.

A malformed value never raises: the reading gets a `reason` naming the header, and the
rest of the headers are still read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime

from .readings import Limit, QuotaReading, Window

UNIFIED_PREFIX = "anthropic-ratelimit-unified-"
ANTHROPIC_PREFIX = "anthropic-ratelimit-"
OPENAI_PREFIX = "x-ratelimit-"
#: per-call USD cost headers accepted, in order of preference
COST_HEADERS = ("x-litellm-response-cost", "x-llmbudget-cost-usd", "x-request-cost", "x-cost-usd")
#: LiteLLM key budget headers: spent so far and the key's budget, in USD
LITELLM_SPEND = "x-litellm-key-spend"
LITELLM_BUDGET = "x-litellm-key-max-budget"
RETRY_HEADERS = ("retry-after", "retry-after-ms")

_RAW_PREFIXES = (
    ANTHROPIC_PREFIX,
    OPENAI_PREFIX,
    *COST_HEADERS,
    *RETRY_HEADERS,
    LITELLM_SPEND,
    LITELLM_BUDGET,
)
_RAW_MAX = 200
_WINDOW_FIELDS = ("utilization", "reset", "status")

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_FULL = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
# datetime.fromtimestamp's safe range, with margin: years 1..9999
_MAX_EPOCH = 253_402_300_799


def parse_go_duration(s: str) -> float | None:
    """A Go duration string (`6m0s`, `12ms`, `1h2m3.5s`, `-1.5h`, `0`) in seconds; None when malformed."""
    if not isinstance(s, str):
        return None
    s = s.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    if not s or not _GO_FULL.fullmatch(s):
        return None
    sign = -1.0 if s.startswith("-") else 1.0
    total = 0.0
    for num, unit in _GO_PART.findall(s.lstrip("+-")):
        total += float(num) * _GO_UNITS[unit]
    if not math.isfinite(total):
        return None
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Seconds as a Go-style duration (`1h2m3.5s`, `12ms`); the inverse of `parse_go_duration` for tests and display."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{_trim(seconds * 1000)}ms"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    out = sign
    if h:
        out += f"{int(h)}h"
    if h or m:
        out += f"{int(m)}m"
    return out + f"{_trim(s)}s"


def _trim(x: float) -> str:
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_rate_limit_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    now: datetime,
    backend: str = "unknown",
    source: str = "piggyback",
    provider: str | None = None,
    http_status: int | None = None,
) -> QuotaReading | None:
    """Read every rate-limit header family present; None when there are none at all. Never raises.

    `provider` overrides the detected family (`anthropic-unified`, `anthropic-api`, `openai`,
    `cost-header-proxy`, `unknown`); `now` anchors relative resets (Go durations, seconds).
    """
    try:
        h = _lower(headers)
    except Exception as e:  # an odd mapping type; report rather than raise on the request path
        return QuotaReading(
            timestamp=_aware(now),
            backend=backend,
            provider=provider or "unknown",
            source="probe" if source == "probe" else "piggyback",
            http_status=http_status,
            reason=f"headers could not be read: {type(e).__name__}",
        )
    raw = {k: v[:_RAW_MAX] for k, v in h.items() if k.startswith(_RAW_PREFIXES)}
    if not raw:
        return None
    now = _aware(now)
    reading = QuotaReading(
        timestamp=now,
        backend=backend,
        provider="unknown",
        source="probe" if source == "probe" else "piggyback",
        raw=raw,
        http_status=http_status,
    )
    try:
        detected: list[str] = []
        if any(k.startswith(UNIFIED_PREFIX) for k in h):
            _parse_unified(h, reading)
            detected.append("anthropic-unified")
        if any(k.startswith(ANTHROPIC_PREFIX) and not k.startswith(UNIFIED_PREFIX) for k in h):
            _parse_anthropic_api(h, reading, now)
            detected.append("anthropic-api")
        if any(k.startswith(OPENAI_PREFIX) for k in h):
            _parse_openai(h, reading, now)
            detected.append("openai")
        if any(k in h for k in (*COST_HEADERS, LITELLM_SPEND, LITELLM_BUDGET)):
            _parse_cost(h, reading)
            detected.append("cost-header-proxy")
        _parse_retry(h, reading)
        reading.provider = provider or (detected[0] if detected else "unknown")
    except Exception as e:  # defensive: a parser bug must never break the proxy's response
        reading.add_reason(f"internal parse error: {type(e).__name__}: {str(e)[:100]}")
        reading.provider = provider or reading.provider
    return reading


# ---------------------------------------------------------------- families


def _parse_unified(h: dict[str, str], r: QuotaReading) -> None:
    unknown: dict[str, str] = {}
    for key, value in h.items():
        if not key.startswith(UNIFIED_PREFIX):
            continue
        rest = key[len(UNIFIED_PREFIX) :]
        if rest == "status":
            r.status = value.strip().lower() or None
            if r.status is None:
                r.add_reason(f"{key}: empty")
        elif rest == "reset":
            r.reset = _epoch(value, key, r)
        elif rest == "representative-claim":
            r.representative_claim = value.strip() or None
        elif rest == "fallback-percentage":
            r.fallback_percentage = _fraction(value, key, r)
        else:
            window, _, fld = rest.rpartition("-")
            if window and fld in _WINDOW_FIELDS:
                w = r.windows.setdefault(window, Window())
                if fld == "utilization":
                    w.utilization = _fraction(value, key, r)
                elif fld == "reset":
                    w.reset = _epoch(value, key, r)
                else:
                    w.status = value.strip().lower() or None
                if window == "overage" and fld == "status":
                    r.overage_status = w.status
            else:
                unknown[rest] = value[:_RAW_MAX]
    if unknown:
        r.extra.setdefault("unified", {}).update(unknown)


def _parse_anthropic_api(h: dict[str, str], r: QuotaReading, now: datetime) -> None:
    for key, value in h.items():
        if not key.startswith(ANTHROPIC_PREFIX) or key.startswith(UNIFIED_PREFIX):
            continue
        resource, _, fld = key[len(ANTHROPIC_PREFIX) :].rpartition("-")
        if not resource or fld not in ("limit", "remaining", "reset"):
            continue
        lim = r.limits.setdefault(resource.replace("-", "_"), Limit())
        if fld == "reset":
            lim.reset = _rfc3339_or_any(value, key, r, now)
        else:
            _set_count(lim, fld, value, key, r)


def _parse_openai(h: dict[str, str], r: QuotaReading, now: datetime) -> None:
    for key, value in h.items():
        if not key.startswith(OPENAI_PREFIX):
            continue
        fld, _, resource = key[len(OPENAI_PREFIX) :].partition("-")
        if fld not in ("limit", "remaining", "reset"):
            continue
        lim = r.limits.setdefault((resource or "requests").replace("-", "_"), Limit())
        if fld == "reset":
            lim.reset = _duration_or_any(value, key, r, now)
        else:
            _set_count(lim, fld, value, key, r)


def _parse_cost(h: dict[str, str], r: QuotaReading) -> None:
    for name in COST_HEADERS:
        if name in h:
            cost = _decimal(h[name], name, r)
            if cost is not None:
                r.cost_usd = cost
                break
    if LITELLM_SPEND in h:
        r.usage_usd = _decimal(h[LITELLM_SPEND], LITELLM_SPEND, r)
    # LiteLLM sends the literal "None" for a key without a budget
    if LITELLM_BUDGET in h and h[LITELLM_BUDGET].strip().lower() not in ("none", "null", ""):
        r.limit_usd = _decimal(h[LITELLM_BUDGET], LITELLM_BUDGET, r)
    if r.limit_usd is not None and r.usage_usd is not None:
        r.credit_usd = r.limit_usd - r.usage_usd


def _parse_retry(h: dict[str, str], r: QuotaReading) -> None:
    if "retry-after-ms" in h:
        ms = _float(h["retry-after-ms"], "retry-after-ms", r)
        if ms is not None:
            r.retry_after_s = ms / 1000.0
            return
    if "retry-after" in h:
        value = h["retry-after"].strip()
        secs: float | None
        try:
            secs = float(value)
            if not math.isfinite(secs):
                secs = None
        except ValueError:
            secs = None
        if secs is None:
            try:
                when = parsedate_to_datetime(value)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                secs = max(0.0, (when - r.timestamp).total_seconds())
            except (TypeError, ValueError, IndexError, OverflowError):
                r.add_reason(f"retry-after: not seconds or an HTTP date ({_show(value)})")
                return
        if secs < 0:
            r.add_reason(f"retry-after: negative ({_show(value)})")
            return
        r.retry_after_s = secs


# ---------------------------------------------------------------- value parsers (record a reason, never raise)


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for k, v in items:
        key = (k.decode("latin-1") if isinstance(k, bytes) else str(k)).strip().lower()
        val = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        out.setdefault(key, val)  # the first value of a repeated header wins
    return out


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _show(value: str) -> str:
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


def _float(value: str, key: str, r: QuotaReading) -> float | None:
    try:
        f = float(value.strip())
    except ValueError:
        r.add_reason(f"{key}: not a number ({_show(value)})")
        return None
    if not math.isfinite(f):
        r.add_reason(f"{key}: not a finite number ({_show(value)})")
        return None
    return f


def _fraction(value: str, key: str, r: QuotaReading) -> float | None:
    f = _float(value, key, r)
    if f is not None and f < 0:
        r.add_reason(f"{key}: negative utilization ({_show(value)})")
        return None
    return f


def _decimal(value: str, key: str, r: QuotaReading) -> Decimal | None:
    try:
        d = Decimal(value.strip())
    except InvalidOperation:
        r.add_reason(f"{key}: not a USD amount ({_show(value)})")
        return None
    if not d.is_finite() or d < 0:
        r.add_reason(f"{key}: not a non-negative USD amount ({_show(value)})")
        return None
    return d


def _set_count(lim: Limit, fld: str, value: str, key: str, r: QuotaReading) -> None:
    f = _float(value, key, r)
    if f is None:
        return
    if f == -1:
        lim.unlimited = True
        return
    if f < 0 or f != int(f):
        r.add_reason(f"{key}: not a count ({_show(value)})")
        return
    setattr(lim, fld, int(f))


def _from_epoch(seconds: float) -> datetime | None:
    if not (0 <= seconds <= _MAX_EPOCH):
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def _epoch(value: str, key: str, r: QuotaReading) -> datetime | None:
    v = value.strip()
    try:
        f = float(v)
    except ValueError:
        dt = _rfc3339(v)  # tolerate an RFC 3339 reset where unix seconds are documented
        if dt is None:
            r.add_reason(f"{key}: not unix seconds ({_show(value)})")
        return dt
    dt = _from_epoch(f) if math.isfinite(f) else None
    if dt is None:
        r.add_reason(f"{key}: unix time out of range ({_show(value)})")
    return dt


def _rfc3339(value: str) -> datetime | None:
    v = value.strip()
    if not v or not v[0].isdigit():
        return None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _relative(now: datetime, seconds: float) -> datetime | None:
    try:
        return now + timedelta(seconds=seconds)
    except OverflowError:
        return None


def _rfc3339_or_any(value: str, key: str, r: QuotaReading, now: datetime) -> datetime | None:
    dt = _rfc3339(value)
    if dt is not None:
        return dt
    return _duration_or_any(value, key, r, now, expected="an RFC 3339 time")


def _duration_or_any(
    value: str, key: str, r: QuotaReading, now: datetime, *, expected: str = "a Go duration"
) -> datetime | None:
    v = value.strip()
    if v == "-1":  # xAI: no reset applies to a bucket without a limit
        return None
    secs = parse_go_duration(v)
    if secs is not None:
        dt = _relative(now, max(secs, 0.0))
        if dt is None:
            r.add_reason(f"{key}: duration out of range ({_show(value)})")
        return dt
    try:
        f = float(v)
    except ValueError:
        dt = _rfc3339(v)
        if dt is None:
            r.add_reason(f"{key}: not {expected} ({_show(value)})")
        return dt
    if not math.isfinite(f) or f < 0:
        r.add_reason(f"{key}: not {expected} ({_show(value)})")
        return None
    # a bare number: an epoch in ms (OpenRouter) or s, else seconds from now
    if f > 1e12:
        dt = _from_epoch(f / 1000.0)
    elif f > 1e9:
        dt = _from_epoch(f)
    else:
        dt = _relative(now, f)
    if dt is None:
        r.add_reason(f"{key}: time out of range ({_show(value)})")
    return dt
