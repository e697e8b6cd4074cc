"""The `budgets:` and `alerts:` configuration blocks.

The short block users already write is accepted verbatim (`daily_limit_usd`, `monthly_limit_usd`,
`per_backend: {name: "20.00/month"}`, `warning_threshold`, `hard_stop`), beside `timezone`,
`fallback`/`fallback_model`, `redis_url` and the general `limits:` list. This module must not
import `llmbudget.config` (which imports it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..attribution_table import SCOPE_FIELDS
from ..money import limit_problem

#: budget scopes: everything, the call's backend or model, then the attribution fields' (`attribution_table`)
SCOPES = ("global", "backend", "model", *SCOPE_FIELDS)
ACTIONS = ("alert", "block", "fallback", "pause")
VALID_PERIODS_TEXT = "day, week, month, session, or rolling hours/days such as 5h, 24h, 7d"
_PERIOD_RE = re.compile(r"^(?:day|week|month|session|[1-9][0-9]{0,4}[hd])$")
#: the periods `per_backend` amounts may name (`20.00/month`)
CALENDAR_ALIASES = {
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "mo": "month",
    "d": "day",
    "w": "week",
    "m": "month",
}


def normalize_period(text: str) -> str:
    """Canonical period (`day`, `week`, `month`, `session`, `<n>h`); ValueError names the valid ones."""
    p = str(text).strip().lower()
    p = CALENDAR_ALIASES.get(p, p)
    if not _PERIOD_RE.match(p):
        raise ValueError(f"unknown period {text!r}; valid periods: {VALID_PERIODS_TEXT}")
    if p.endswith("d") and p[:-1].isdigit():
        p = f"{int(p[:-1]) * 24}h"
    return p


def _forbid_unknown(model: type[BaseModel], data: object) -> object:
    """Reject unknown keys with the list of valid ones (pydantic's message names none for nested models)."""
    if isinstance(data, dict):
        unknown = [k for k in data if k not in model.model_fields]
        if unknown:
            raise ValueError(
                f"unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(model.model_fields))}"
            )
    return data


def _money(value: object, what: str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an amount in USD, got {value!r}")
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip().lstrip("$"))
    except InvalidOperation:
        raise ValueError(f"{what} must be an amount in USD such as 20.00, got {value!r}") from None
    problem = limit_problem(d)
    if problem is not None:
        raise ValueError(f"{what} {problem}, got {value!r}")
    return d


class BackendAmount(BaseModel):
    """A `per_backend` value: `20.00/month` (a bare number means per month)."""

    model_config = ConfigDict(frozen=True)
    limit_usd: Decimal
    period: str

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        if isinstance(value, BackendAmount):
            return value
        if isinstance(value, dict):
            return {
                "limit_usd": _money(value.get("limit_usd"), "limit_usd"),
                "period": normalize_period(value.get("period", "month")),
            }
        text = str(value).strip()
        if "/" in text:
            amount, _, period = text.partition("/")
        else:
            amount, period = text, "month"
        if not period.strip():
            raise ValueError(f"missing period after '/' in {text!r}; valid periods: {VALID_PERIODS_TEXT}")
        return {"limit_usd": _money(amount, "amount"), "period": normalize_period(period)}


class LimitConfig(BaseModel):
    """One entry of `budgets.limits`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    scope: Literal["global", "backend", "model", "agent", "session", "user", "team", "task_type", "key"] = (
        "global"
    )
    #: value (shell-style pattern) of the scope field; None or "*": every value gets its own counter
    match: str | None = None
    limit_usd: Decimal | None = None
    limit_tokens: int | None = Field(default=None, ge=0)
    period: str = "day"
    warn: list[float] | None = None
    action: Literal["alert", "block", "fallback", "pause"] = "block"
    committed: bool = False

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: object) -> object:
        data = _forbid_unknown(cls, data)
        if isinstance(data, dict) and "limit_usd" in data and data["limit_usd"] is not None:
            data = {**data, "limit_usd": _money(data["limit_usd"], "limit_usd")}
        return data

    @field_validator("period", mode="before")
    @classmethod
    def _period(cls, v: object) -> str:
        return normalize_period(str(v))

    @field_validator("warn")
    @classmethod
    def _warn(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            for t in v:
                if not 0 < t <= 1:
                    raise ValueError(f"warning thresholds are fractions in (0, 1], got {t}")
            v = sorted(set(v))
        return v

    @model_validator(mode="after")
    def _one_limit(self) -> LimitConfig:
        if (self.limit_usd is None) == (self.limit_tokens is None):
            raise ValueError("give exactly one of limit_usd or limit_tokens")
        if self.period == "session" and self.scope == "global":
            pass  # a per-session global limit counts each session separately
        return self


class BudgetsConfig(BaseModel):
    """The whole `budgets:` block."""

    model_config = ConfigDict(extra="forbid")

    daily_limit_usd: Decimal | None = None
    weekly_limit_usd: Decimal | None = None
    monthly_limit_usd: Decimal | None = None
    per_backend: dict[str, BackendAmount] = Field(default_factory=dict)
    warning_threshold: float | list[float] = 0.8
    #: refuse (or fall back) at the limit; false turns the short-form limits into warnings only
    hard_stop: bool = True
    #: calendar windows (day/week/month) in this IANA zone; default the top-level `timezone`, else the system's
    timezone: str | None = None
    #: a `local: true` backend that serves calls once a cloud budget is exhausted
    fallback: str | None = None
    fallback_model: str | None = None
    limits: list[LimitConfig] = Field(default_factory=list)
    #: keep counters in Redis (atomic Lua script) instead of the ledger's database
    redis_url: str | None = None
    #: key prefix of the counters in Redis: deployments sharing one Redis keep separate budgets
    redis_prefix: str = Field(default="llmb:budget:", min_length=1, max_length=100)
    #: a reservation not settled within this time (crashed process) is released
    reservation_ttl_s: int = Field(default=3600, ge=10)
    #: worst-case output tokens when the request sets no max_tokens and the model's maximum is unknown
    default_max_output_tokens: int = Field(default=32768, ge=1)
    #: the proxy estimates input as characters/4; x4 bounds text input by its character count (a token
    #: is at least one character), so the reservation is a true worst case. 1.0 trusts the estimate.
    input_token_factor: float = Field(default=4.0, ge=1.0, le=16.0)
    #: counters that cannot be read or seeded: `closed` refuses budgeted calls with a 503, `open` lets them through
    on_error: Literal["closed", "open"] = "closed"
    #: a call refused only because calls in flight hold the rest waits this long for them to settle (0: never)
    inflight_wait_s: float = Field(default=3.0, ge=0, le=60)
    #: seconds between reconciliations of the counters with the ledger in `llmbudget serve` (0: never)
    reconcile_interval_s: float = Field(default=5.0, ge=0, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: object) -> object:
        return _forbid_unknown(cls, data)

    @field_validator("daily_limit_usd", "weekly_limit_usd", "monthly_limit_usd", mode="before")
    @classmethod
    def _limits_usd(cls, v: object, info: ValidationInfo) -> Decimal | None:
        # a field validator, so an error points at the key's own line
        return None if v is None else _money(v, str(info.field_name))

    @field_validator("per_backend", mode="before")
    @classmethod
    def _per_backend(cls, v: object) -> dict[object, object]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("per_backend maps a backend name to an amount such as 20.00/month")
        return v

    @field_validator("warning_threshold")
    @classmethod
    def _threshold(cls, v: float | list[float]) -> float | list[float]:
        for t in v if isinstance(v, list) else [v]:
            if not 0 < t <= 1:
                raise ValueError(f"warning_threshold is a fraction in (0, 1], got {t}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {v!r}; use an IANA name such as Europe/Berlin") from None
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {v!r}")
        return v

    @property
    def warn_thresholds(self) -> list[float]:
        t = self.warning_threshold
        return sorted(set(t)) if isinstance(t, list) else [t]

    def has_budgets(self) -> bool:
        return bool(
            self.daily_limit_usd is not None
            or self.weekly_limit_usd is not None
            or self.monthly_limit_usd is not None
            or self.per_backend
            or self.limits
        )


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    format: Literal["json", "slack"] = "json"
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=4, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: object) -> object:
        return _forbid_unknown(cls, data)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"webhook url must be an http(s) URL, got {v!r}")
        return v


class UtilizationConfig(BaseModel):
    """Under-use alerts for committed budgets and quota readings (the floor)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: at or after this share of the cycle, a backend below `min_used` is under-used
    midcycle: float = Field(default=0.5, gt=0, lt=1)
    min_used: float = Field(default=0.5, ge=0, le=1)
    #: a backend with less than this share remaining is close to exhausted ("shift load")
    near_exhausted_remaining: float = Field(default=0.05, ge=0, le=1)
    #: projected end-of-cycle use across backends below this is "too conservative"
    min_projected_total: float = Field(default=0.7, ge=0, le=1)
    #: quota windows (from quota readings) treated as cycles; the 5-hour window resets too often to judge
    quota_windows: list[str] = Field(default_factory=lambda: ["7d"])
    #: how often the server re-checks (seconds)
    check_interval_s: float = Field(default=300.0, ge=5)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: object) -> object:
        return _forbid_unknown(cls, data)


class AlertsConfig(BaseModel):
    """The `alerts:` block."""

    model_config = ConfigDict(extra="forbid")

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    utilization: UtilizationConfig = Field(default_factory=UtilizationConfig)
    #: in-app notifications kept (oldest dropped)
    keep_notifications: int = Field(default=500, ge=10)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: object) -> object:
        return _forbid_unknown(cls, data)


class _ErrorAt(Protocol):
    """The config's line map: an error pointing at a key's line (`llmbudget.config.LineMap`)."""

    def error(self, loc: tuple[str | int, ...], message: str) -> Exception: ...


class _Backend(Protocol):
    @property
    def local(self) -> bool: ...


class _Sections(Protocol):
    """The parts of the whole config (`llmbudget.config.Config`) the cross-checks read."""

    @property
    def budgets(self) -> BudgetsConfig | None: ...
    @property
    def backends(self) -> Mapping[str, _Backend]: ...


def validate_budget_section(cfg: _Sections, lm: _ErrorAt) -> None:
    """Cross-checks that need the rest of the config (backend names); errors name file, line and key."""
    b = cfg.budgets
    if b is None:
        return
    backends = cfg.backends
    choices = ", ".join(sorted(backends)) or "(no backends are configured)"
    for name in b.per_backend:
        if name not in backends:
            raise lm.error(
                ("budgets", "per_backend", name), f"unknown backend {name!r}; configured backends: {choices}"
            )
    for i, lim in enumerate(b.limits):
        if (
            lim.scope == "backend"
            and lim.match
            and lim.match != "*"
            and not any(ch in lim.match for ch in "*?[")
            and lim.match not in backends
        ):
            raise lm.error(
                ("budgets", "limits", i, "match"),
                f"unknown backend {lim.match!r}; configured backends: {choices}",
            )
        if lim.action == "fallback" and not b.fallback:
            raise lm.error(
                ("budgets", "limits", i, "action"),
                "action: fallback needs budgets.fallback (a local backend) to be set",
            )
    if b.fallback is not None:
        if b.fallback not in backends:
            raise lm.error(
                ("budgets", "fallback"), f"unknown backend {b.fallback!r}; configured backends: {choices}"
            )
        if not backends[b.fallback].local:
            local = (
                ", ".join(sorted(n for n, be in backends.items() if be.local))
                or "(none is marked local: true)"
            )
            raise lm.error(
                ("budgets", "fallback"),
                f"fallback backend {b.fallback!r} must be marked `local: true`; local backends: {local}",
            )
    if b.fallback_model is not None and b.fallback is None:
        raise lm.error(("budgets", "fallback_model"), "fallback_model needs budgets.fallback to be set")
