"""Budgets as plain data: which calls a budget applies to and which counter a call writes.

`budgets_from_config` turns the short form (`daily_limit_usd`, `per_backend`, ...) and the
`limits:` list into one list of `Budget`s; everything downstream sees only these.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from ..attribution_table import SCOPE_FIELDS
from ..money import format_exact, from_nano, to_nano
from .config import BudgetsConfig, LimitConfig
from .windows import Window, window_for

#: CallInfo / UsageEvent attribute read for each scope (`key`: a virtual key's name)
SCOPE_FIELD = {"backend": "backend", "model": "model", **SCOPE_FIELDS}


@dataclass(frozen=True, slots=True)
class Budget:
    """One enforced limit. `unit` is `usd` (amounts in nano-USD) or `tokens`."""

    name: str
    scope: str
    match: str | None
    unit: str
    #: nano-USD or tokens
    limit: int
    period: str
    warn: tuple[float, ...]
    #: alert | block | fallback | pause
    action: str
    committed: bool = False

    @property
    def hard(self) -> bool:
        """True when crossing the limit refuses (or diverts) the call."""
        return self.action != "alert"

    def scope_value(self, call: object) -> str | None:
        """The value of this budget's scope for a call (`*` for global); None: the budget does not apply."""
        if self.scope == "global":
            return "*"
        value = getattr(call, SCOPE_FIELD[self.scope], None)
        if not value:
            return None
        if self.match and self.match != "*" and not fnmatchcase(str(value), self.match):
            return None
        return str(value)

    def window(self, call: object, now: datetime, tz: ZoneInfo) -> Window | None:
        return window_for(self.period, now, tz, session=getattr(call, "session", None))

    def counter_prefix(self, scope_value: str) -> str:
        """Counters of one budget and scope value; the window key is appended."""
        return _counter_prefix(self.name, scope_value)

    def describe_limit(self) -> str:
        # exactly as configured: a $0.001 limit reads `$0.001`, not `<$0.01`
        return format_exact(from_nano(self.limit)) if self.unit == "usd" else f"{self.limit:,} tokens"


@functools.lru_cache(maxsize=8192)
def _counter_prefix(name: str, scope_value: str) -> str:
    # '|' separates the parts of a counter key; escape it inside names and values
    return f"{name.replace('|', '%7C')}|{scope_value.replace('|', '%7C')}|"


def _limit_name(lim: LimitConfig) -> str:
    match = lim.match if lim.match and lim.match != "*" else "each" if lim.scope != "global" else ""
    parts = [lim.scope] + ([match] if match else []) + [lim.period]
    return ":".join(parts)


def budgets_from_config(cfg: BudgetsConfig) -> list[Budget]:
    """Every budget the block defines, short-form first, in a stable order; names are unique."""
    legacy_action = ("fallback" if cfg.fallback else "block") if cfg.hard_stop else "alert"
    warn = tuple(cfg.warn_thresholds)
    out: list[Budget] = []
    for name, period, amount in (
        ("daily", "day", cfg.daily_limit_usd),
        ("weekly", "week", cfg.weekly_limit_usd),
        ("monthly", "month", cfg.monthly_limit_usd),
    ):
        if amount is not None:
            out.append(
                Budget(name, "global", None, "usd", to_nano(Decimal(amount)), period, warn, legacy_action)
            )
    for backend, ba in cfg.per_backend.items():
        out.append(
            Budget(
                f"backend:{backend}/{ba.period}",
                "backend",
                backend,
                "usd",
                to_nano(ba.limit_usd),
                ba.period,
                warn,
                legacy_action,
            )
        )
    for lim in cfg.limits:
        unit = "usd" if lim.limit_usd is not None else "tokens"
        limit = to_nano(lim.limit_usd) if lim.limit_usd is not None else int(lim.limit_tokens or 0)
        out.append(
            Budget(
                lim.name or _limit_name(lim),
                lim.scope,
                lim.match,
                unit,
                limit,
                lim.period,
                tuple(lim.warn) if lim.warn is not None else warn,
                lim.action,
                lim.committed,
            )
        )
    seen: dict[str, int] = {}
    unique: list[Budget] = []
    for b in out:  # two limits may generate the same name: number the later ones
        n = seen.get(b.name, 0)
        seen[b.name] = n + 1
        if n:
            b = replace(b, name=f"{b.name}#{n + 1}")
        unique.append(b)
    return unique
