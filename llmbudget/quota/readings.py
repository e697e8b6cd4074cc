"""Quota readings: one observation of an account's rate-limit state, from a probe or from real traffic.

A reading is a plain dataclass with `to_dict()`/`from_dict()` (JSON-ready); it does no I/O.
`llmbudget.quota.readings_log` stores readings and reads them back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypedDict

Source = Literal["probe", "piggyback"]
#: `anthropic-ratelimit-unified-status` values
UNIFIED_STATUSES = ("allowed", "allowed_warning", "rejected")


class WindowDict(TypedDict):
    utilization: float | None
    reset: str | None
    status: str | None


class LimitDict(TypedDict):
    limit: int | None
    remaining: int | None
    reset: str | None
    unlimited: bool


class ReadingDict(TypedDict):
    """A reading as JSON (`QuotaReading.to_dict()`): the readings log's line, the ledger's row, the API's answer."""

    timestamp: str | None
    backend: str
    provider: str
    source: Source
    status: str | None
    windows: dict[str, WindowDict]
    representative_claim: str | None
    reset: str | None
    fallback_percentage: float | None
    overage_status: str | None
    limits: dict[str, LimitDict]
    retry_after_s: float | None
    cost_usd: str | None
    key_valid: bool | None
    credit_usd: str | None
    limit_usd: str | None
    usage_usd: str | None
    violations: list[dict[str, object]]
    retry_delay_s: float | None
    http_status: int | None
    model: str | None
    reason: str | None
    raw: dict[str, str]
    extra: dict[str, Any]


@dataclass(slots=True)
class Window:
    """One utilization window (`5h`, `7d`, `7d_oi`, `overage`, ...): fraction used and when it resets."""

    #: fraction 0-1 (may exceed 1 when a provider over-reports); None when not reported
    utilization: float | None = None
    reset: datetime | None = None
    #: the window's own status header when sent (`anthropic-ratelimit-unified-5h-status`)
    status: str | None = None

    def to_dict(self) -> WindowDict:
        return {"utilization": self.utilization, "reset": _iso(self.reset), "status": self.status}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Window:
        return cls(
            utilization=_opt_float(d.get("utilization")),
            reset=_parse_dt(d.get("reset")),
            status=d.get("status"),
        )


@dataclass(slots=True)
class Limit:
    """A request or token bucket: `requests`, `tokens`, `input_tokens`, `output_tokens`."""

    limit: int | None = None
    remaining: int | None = None
    reset: datetime | None = None
    #: the provider sent -1 (no limit applies / not enforced)
    unlimited: bool = False

    @property
    def fraction_used(self) -> float | None:
        """Share of the bucket used, 0-1; None when limit or remaining is unknown."""
        if self.limit is None or self.remaining is None or self.limit <= 0:
            return None
        return max(0.0, min(1.0, 1.0 - self.remaining / self.limit))

    def to_dict(self) -> LimitDict:
        return {
            "limit": self.limit,
            "remaining": self.remaining,
            "reset": _iso(self.reset),
            "unlimited": self.unlimited,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Limit:
        return cls(
            limit=_opt_int(d.get("limit")),
            remaining=_opt_int(d.get("remaining")),
            reset=_parse_dt(d.get("reset")),
            unlimited=bool(d.get("unlimited", False)),
        )


@dataclass(slots=True)
class QuotaReading:
    """One observation of an account's quota. Every field but the first four is optional."""

    timestamp: datetime
    #: configured account (provider entry) or proxy backend name
    backend: str
    #: provider kind: anthropic-unified, anthropic-api, openai, xai, gemini, openrouter, cost-header-proxy, ...
    provider: str
    source: Source = "probe"
    #: unified status: allowed | allowed_warning | rejected (others kept verbatim)
    status: str | None = None
    windows: dict[str, Window] = field(default_factory=dict)
    representative_claim: str | None = None
    #: `anthropic-ratelimit-unified-reset`: when the binding limit resets
    reset: datetime | None = None
    fallback_percentage: float | None = None
    overage_status: str | None = None
    #: request/token buckets by name: requests, tokens, input_tokens, output_tokens
    limits: dict[str, Limit] = field(default_factory=dict)
    retry_after_s: float | None = None
    #: USD cost of the call, when a cost-reporting proxy says so
    cost_usd: Decimal | None = None
    #: None: not checked; False: the provider refused the key (401/403)
    key_valid: bool | None = None
    #: OpenRouter-style credit: remaining USD, limit USD, used USD
    credit_usd: Decimal | None = None
    limit_usd: Decimal | None = None
    usage_usd: Decimal | None = None
    #: Gemini `QuotaFailure` violations: [{"quota_metric", "quota_id", "quota_value", "description"...}]
    violations: list[dict[str, object]] = field(default_factory=list)
    #: Gemini `RetryInfo.retryDelay` in seconds
    retry_delay_s: float | None = None
    http_status: int | None = None
    model: str | None = None
    #: why a reading is UNKNOWN or which parts were malformed (human readable)
    reason: str | None = None
    #: the rate-limit headers this reading came from (never an auth header or key)
    raw: dict[str, str] = field(default_factory=dict)
    #: anything else a provider plugin wants to keep (JSON-ready)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_reason(self, text: str) -> None:
        """Append a reason (several malformed parts are all named)."""
        self.reason = text if not self.reason else f"{self.reason}; {text}"

    @property
    def has_data(self) -> bool:
        """True when the reading carries any quota signal at all."""
        windows = any(
            w.utilization is not None or w.reset is not None or w.status for w in self.windows.values()
        )
        limits = any(
            lim.limit is not None or lim.remaining is not None or lim.unlimited
            for lim in self.limits.values()
        )
        return bool(
            self.status
            or windows
            or limits
            or self.cost_usd is not None
            or self.key_valid is False
            or self.credit_usd is not None
            or self.limit_usd is not None
            or self.violations
            or self.retry_after_s is not None
            or self.retry_delay_s is not None
        )

    def to_dict(self) -> ReadingDict:
        """JSON-ready dict; Decimals as strings (exact), datetimes as RFC 3339."""
        return {
            "timestamp": _iso(self.timestamp),
            "backend": self.backend,
            "provider": self.provider,
            "source": self.source,
            "status": self.status,
            "windows": {k: w.to_dict() for k, w in self.windows.items()},
            "representative_claim": self.representative_claim,
            "reset": _iso(self.reset),
            "fallback_percentage": self.fallback_percentage,
            "overage_status": self.overage_status,
            "limits": {k: lim.to_dict() for k, lim in self.limits.items()},
            "retry_after_s": self.retry_after_s,
            "cost_usd": _dec_str(self.cost_usd),
            "key_valid": self.key_valid,
            "credit_usd": _dec_str(self.credit_usd),
            "limit_usd": _dec_str(self.limit_usd),
            "usage_usd": _dec_str(self.usage_usd),
            "violations": [dict(v) for v in self.violations],
            "retry_delay_s": self.retry_delay_s,
            "http_status": self.http_status,
            "model": self.model,
            "reason": self.reason,
            "raw": dict(self.raw),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuotaReading:
        """Inverse of `to_dict()`; raises ValueError on a dict that is not a reading."""
        if not isinstance(d, Mapping):
            raise ValueError("a reading must be a JSON object")
        ts = _parse_dt(d.get("timestamp"))
        if ts is None:
            raise ValueError("reading has no valid timestamp")
        backend = d.get("backend")
        if not isinstance(backend, str) or not backend:
            raise ValueError("reading has no backend")
        src = d.get("source") or "probe"
        if src not in ("probe", "piggyback"):
            raise ValueError(f"reading source must be probe or piggyback, got {src!r}")
        source: Source = "probe" if src == "probe" else "piggyback"
        windows = d.get("windows") or {}
        limits = d.get("limits") or {}
        if not isinstance(windows, Mapping) or not isinstance(limits, Mapping):
            raise ValueError("reading windows/limits must be objects")
        return cls(
            timestamp=ts,
            backend=backend,
            provider=str(d.get("provider") or "unknown"),
            source=source,
            status=d.get("status"),
            windows={str(k): Window.from_dict(v) for k, v in windows.items() if isinstance(v, Mapping)},
            representative_claim=d.get("representative_claim"),
            reset=_parse_dt(d.get("reset")),
            fallback_percentage=_opt_float(d.get("fallback_percentage")),
            overage_status=d.get("overage_status"),
            limits={str(k): Limit.from_dict(v) for k, v in limits.items() if isinstance(v, Mapping)},
            retry_after_s=_opt_float(d.get("retry_after_s")),
            cost_usd=_opt_dec(d.get("cost_usd")),
            key_valid=d.get("key_valid"),
            credit_usd=_opt_dec(d.get("credit_usd")),
            limit_usd=_opt_dec(d.get("limit_usd")),
            usage_usd=_opt_dec(d.get("usage_usd")),
            violations=[dict(v) for v in (d.get("violations") or []) if isinstance(v, Mapping)],
            retry_delay_s=_opt_float(d.get("retry_delay_s")),
            http_status=_opt_int(d.get("http_status")),
            model=d.get("model"),
            reason=d.get("reason"),
            raw={str(k): str(v) for k, v in (d.get("raw") or {}).items()},
            extra=dict(d.get("extra") or {}),
        )


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_dt(v: Any) -> datetime | None:
    if v is None or v == "":
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if not isinstance(v, str):
        raise ValueError(f"not a timestamp: {v!r}")
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"not a timestamp: {v!r}") from e
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _opt_float(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    f = float(v)
    if math.isnan(f) or math.isinf(f):
        return None
    return f


def _opt_int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    return int(v)


def _opt_dec(v: Any) -> Decimal | None:
    if v is None:
        return None
    try:
        d = Decimal(str(v))
    except InvalidOperation as e:
        raise ValueError(f"not a decimal amount: {v!r}") from e
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {v!r}")
    return d


def _dec_str(d: Decimal | None) -> str | None:
    return None if d is None else str(d)
