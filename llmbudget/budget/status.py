"""What `llmbudget budget` and `GET /api/budgets` show: every budget's limit, spent, reserved, reset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..events import utcnow
from ..money import from_nano
from ..store.buckets import to_us
from .rules import Budget
from .seed import SCOPE_COLUMN, spec_for
from .store import CounterStore
from .windows import Window, format_reset, window_for


@dataclass(slots=True)
class BudgetStatus:
    """One budget (for one scope value) in its current window."""

    budget: Budget
    value: str
    window: Window | None
    spent: int
    reserved: int
    tz: ZoneInfo

    @property
    def remaining(self) -> int:
        return max(0, self.budget.limit - self.spent - self.reserved)

    @property
    def percent(self) -> float:
        return 100.0 * self.spent / self.budget.limit if self.budget.limit else 100.0

    @property
    def state(self) -> str:
        """ok | warning | exhausted (spent plus reserved reached the limit)."""
        b = self.budget
        if self.spent + self.reserved >= b.limit:
            return "exhausted"
        if b.warn and self.spent >= min(b.warn) * b.limit:
            return "warning"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        money = b.unit == "usd"

        def amount(v: int) -> str | int:
            # exact decimal string without trailing zeros or exponent: "5", "0.00105", "0"
            return format(from_nano(v).normalize(), "f") if money else v

        w = self.window
        return {
            "name": b.name,
            "scope": b.scope,
            "match": b.match,
            "value": None if b.scope == "global" else self.value,
            "unit": b.unit,
            "period": b.period,
            "action": b.action,
            "committed": b.committed,
            "limit": amount(b.limit),
            "spent": amount(self.spent),
            "reserved": amount(self.reserved),
            "remaining": amount(self.remaining),
            "percent": round(self.percent, 2),
            "window_start": w.start.isoformat() if w and w.start else None,
            "reset": w.reset.isoformat() if w and w.reset else None,
            "reset_local": format_reset(w.reset if w else None, self.tz),
            "status": self.state,
            **(
                {"limit_nano": b.limit, "spent_nano": self.spent, "reserved_nano": self.reserved}
                if money
                else {}
            ),
        }


class _Attr:
    """A stand-in call carrying one attribution field, for `Budget.scope_value`."""

    def __init__(self, scope: str, value: str) -> None:
        from .rules import SCOPE_FIELD

        setattr(self, SCOPE_FIELD[scope], value)


def _literal(match: str | None) -> bool:
    return bool(match) and match != "*" and not any(ch in str(match) for ch in "*?[")


def _ensure(store: CounterStore, b: Budget, value: str, w: Window) -> list[str]:
    """The counters of one budget value in window `w`, created seeded from the ledger when missing."""
    prefix = b.counter_prefix(value)
    store.ensure({prefix + k: spec_for(b, value, w, k, None) for k in w.read_keys})
    return [prefix + k for k in w.read_keys]


def budget_status(
    budgets: list[Budget],
    store: CounterStore,
    tz: ZoneInfo,
    now: datetime | None = None,
    *,
    max_values: int = 50,
) -> list[BudgetStatus]:
    """Every budget in its current window; per-value budgets list each value seen (most spent first).

    Spend is what the counters hold; a counter not created yet is created now, seeded from the
    ledger, so the figures agree with `llmbudget costs` over the same window (DESIGN.md section 5).
    """
    now = now or utcnow()
    out: list[BudgetStatus] = []
    for b in budgets:
        if b.period != "session" and (b.scope == "global" or _literal(b.match)):
            value = "*" if b.scope == "global" else str(b.match)
            w = window_for(b.period, now, tz)
            assert w is not None
            keys = _ensure(store, b, value, w)
            t = store.totals(keys)
            out.append(
                BudgetStatus(b, value, w, sum(v[0] for v in t.values()), sum(v[1] for v in t.values()), tz)
            )
            continue
        if b.period != "session" and b.scope not in ("session", "key"):  # not rollup dimensions
            # values with ledger spend in this window but no counter yet (usage that never met the gate)
            w = window_for(b.period, now, tz)
            assert w is not None and w.start is not None
            for value in store.ledger_values(SCOPE_COLUMN[b.scope], to_us(w.start), to_us(now) + 1):
                if b.scope_value(_Attr(b.scope, value)) is not None:
                    _ensure(store, b, value, w)
        rows = store.scan(f"{b.name}|")
        grouped: dict[str, list[int]] = {}
        windows: dict[str, Window | None] = {}
        for key, (spent, reserved) in rows.items():
            _, value, wkey = key.split("|", 2)
            if b.period == "session":
                w = window_for("session", now, tz, session=wkey.split(":", 1)[1])
                value = f"{value} / {wkey.split(':', 1)[1]}" if b.scope != "session" else value
            else:
                w = window_for(b.period, now, tz)
                if w is None or wkey not in w.read_keys:
                    continue
            acc = grouped.setdefault(value, [0, 0])
            acc[0] += spent
            acc[1] += reserved
            windows[value] = w
        ranked = sorted(grouped.items(), key=lambda kv: -kv[1][0])[:max_values]
        for value, (spent, reserved) in ranked:
            out.append(BudgetStatus(b, value, windows[value], spent, reserved, tz))
    return out
