"""What `llmbudget budget` and `GET /api/budgets` show: every budget's limit, spent, reserved, reset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..events import utcnow
from ..money import from_nano
from ..store.buckets import to_us
from .counters import CounterStore, Reconciled
from .rules import SCOPE_FIELD, Budget
from .seed import SCOPE_COLUMN, SeedSpec, spec_for
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
    #: the ledger's spend for the window (what `llmbudget costs` says)
    ledger: int = 0
    #: settled by the gate, not in the ledger yet (plus unpriced calls' kept worst case)
    unledgered: int = 0
    #: how far the counters were from the ledger before this report reconciled them (or, read
    #: without reconciling, how far they are off now)
    drift: int = 0

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
            "ledger_spent": amount(self.ledger),
            "unledgered": amount(self.unledgered),
            "drift": amount(self.drift) if not money else format(from_nano(self.drift).normalize(), "f"),
            **(
                {
                    "limit_nano": b.limit,
                    "spent_nano": self.spent,
                    "reserved_nano": self.reserved,
                    "ledger_spent_nano": self.ledger,
                    "drift_nano": self.drift,
                }
                if money
                else {}
            ),
        }


class _Attr:
    """A stand-in call carrying one attribution field, for `Budget.scope_value`."""

    def __init__(self, scope: str, value: str) -> None:
        setattr(self, SCOPE_FIELD[scope], value)


def _literal(match: str | None) -> bool:
    return bool(match) and match != "*" and not any(ch in str(match) for ch in "*?[")


def _spec_of(b: Budget, key: str, now: datetime, tz: ZoneInfo) -> tuple[str, Window, SeedSpec] | None:
    """(scope value, window, seed) of an existing counter key in its budget's current window; None when past."""
    _, raw_value, wkey = key.split("|", 2)
    value = raw_value.replace("%7C", "|")
    if b.period == "session":
        session = wkey.split(":", 1)[1]
        w = window_for("session", now, tz, session=session)
    else:
        session = None
        w = window_for(b.period, now, tz)
        if w is None or wkey not in w.read_keys:
            return None
    assert w is not None
    return value, w, spec_for(b, value, w, wkey, session)


def live_specs(
    budgets: list[Budget],
    store: CounterStore,
    tz: ZoneInfo,
    now: datetime,
    *,
    sessions: set[str] | None = None,
) -> dict[str, SeedSpec]:
    """Every existing counter of the current windows with the seed that says what the ledger holds for it.

    Session-period counters never expire; with `sessions` only those sessions are included.
    """
    out: dict[str, SeedSpec] = {}
    for b in budgets:
        if b.period != "session" and (b.scope == "global" or _literal(b.match)):
            value = "*" if b.scope == "global" else str(b.match)
            w = window_for(b.period, now, tz)
            assert w is not None
            prefix = b.counter_prefix(value)
            out.update({prefix + k: spec_for(b, value, w, k, None) for k in w.read_keys})
            continue
        if b.period == "session" and sessions is not None and not sessions:
            continue
        for key in store.scan(f"{b.name.replace('|', '%7C')}|"):
            if (
                sessions is not None
                and b.period == "session"
                and key.rsplit("session:", 1)[-1] not in sessions
            ):
                continue
            got = _spec_of(b, key, now, tz)
            if got is not None:
                out[key] = got[2]
    return out


def _status(
    b: Budget,
    value: str,
    w: Window | None,
    keys: list[str],
    rec: dict[str, Reconciled],
    store: CounterStore,
    tz: ZoneInfo,
    *,
    now_spent: bool = False,
) -> BudgetStatus:
    t = store.totals(keys)
    parts = [rec[k] for k in keys if k in rec]
    return BudgetStatus(
        b,
        value,
        w,
        sum(r.before if now_spent else r.after for r in parts),
        sum(v[1] for v in t.values()),
        tz,
        ledger=sum(r.ledger for r in parts),
        unledgered=sum(r.unledgered + r.kept for r in parts),
        drift=sum(r.drift for r in parts),
    )


def budget_status(
    budgets: list[Budget],
    store: CounterStore,
    tz: ZoneInfo,
    now: datetime | None = None,
    *,
    max_values: int = 50,
    reconcile: bool = True,
) -> list[BudgetStatus]:
    """Every budget in its current window; per-value budgets list each value seen (most spent first).

    Every counter shown is reconciled with the ledger first (created when missing), so the figures
    agree with `llmbudget costs` over the same window; `drift` says by how
    much a counter was off before.

    `reconcile=False` writes nothing (the dashboard's budgets page): `spent` is what the counters
    hold now, compared with the ledger (`CounterStore.check`), and `drift` is how far they are off
    now, corrected by the next reconciliation (every `budgets.reconcile_interval_s` in `serve`).
    """
    now = now or utcnow()
    level = store.reconcile if reconcile else store.check
    out: list[BudgetStatus] = []
    for b in budgets:
        if b.period != "session" and (b.scope == "global" or _literal(b.match)):
            value = "*" if b.scope == "global" else str(b.match)
            w = window_for(b.period, now, tz)
            assert w is not None
            prefix = b.counter_prefix(value)
            specs = {prefix + k: spec_for(b, value, w, k, None) for k in w.read_keys}
            out.append(_status(b, value, w, list(specs), level(specs), store, tz, now_spent=not reconcile))
            continue
        grouped: dict[str, list[str]] = {}
        windows: dict[str, Window | None] = {}
        specs = {}
        if b.period != "session" and b.scope not in ("session", "key"):  # not rollup dimensions
            # values with ledger spend in this window but no counter yet (usage that never met the gate)
            w = window_for(b.period, now, tz)
            assert w is not None and w.start is not None
            for value in store.ledger_values(SCOPE_COLUMN[b.scope], to_us(w.start), to_us(now) + 1):
                if b.scope_value(_Attr(b.scope, value)) is not None:
                    prefix = b.counter_prefix(value)
                    fresh = {prefix + k: spec_for(b, value, w, k, None) for k in w.read_keys}
                    if reconcile:
                        store.ensure(fresh)
                    else:  # read as the ledger's figure below (`check` of a counter not created yet)
                        specs.update(fresh)
                        grouped[value] = list(fresh)
                        windows[value] = w
        for key in store.scan(f"{b.name.replace('|', '%7C')}|"):
            got = _spec_of(b, key, now, tz)
            if got is None or key in specs:
                continue
            value, w, spec = got
            if b.period == "session" and b.scope != "session":
                value = f"{value} / {key.rsplit('session:', 1)[-1]}"
            grouped.setdefault(value, []).append(key)
            windows[value] = w
            specs[key] = spec
        rec = level(specs)
        rows = [
            _status(b, value, windows[value], keys, rec, store, tz, now_spent=not reconcile)
            for value, keys in grouped.items()
        ]
        out.extend(sorted(rows, key=lambda r: -r.spent)[:max_values])
    return out
