"""Budget status as the counters hold it right now, for pages that are looked at every few seconds.

`budget_status` (what `llmbudget budget` prints) first reconciles every counter with the ledger,
a write per counter; the dashboard's overview reads the counters only (one `totals` or `scan`
per budget) so it stays fast at any ledger size. The budgets page still shows the reconciled
figures and their drift.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from ..store.base import FILTER_FIELDS, Ledger
from .counters import CounterStore
from .rules import SCOPE_FIELD, Budget
from .status import BudgetStatus, _literal, _spec_of
from .windows import Window, window_for


def _ledger_scope(b: Budget) -> bool:
    return b.scope == "global" or SCOPE_FIELD.get(b.scope) in FILTER_FIELDS


def _ledger_spend(ledger: Ledger, b: Budget, value: str, w: Window, now: datetime, tz: ZoneInfo) -> int:
    """What the ledger's rollups hold for a budget with no counter yet (usage that never met the gate)."""
    filters = {} if b.scope == "global" else {SCOPE_FIELD[b.scope]: value}
    rows = ledger.costs(since=w.start, until=w.reset or now, tz=tz, filters=filters)
    if b.unit == "usd":
        return sum(r.cost_nano for r in rows)
    return sum(r.input_tokens + r.output_tokens for r in rows)


def glance(
    budgets: list[Budget],
    store: CounterStore,
    tz: ZoneInfo,
    now: datetime,
    *,
    ledger: Ledger | None = None,
    max_values: int = 20,
) -> list[BudgetStatus]:
    """Every budget in its current window from the counters (no writes); a counter not created yet
    reads as the ledger's spend for its window."""
    out: list[BudgetStatus] = []
    for b in budgets:
        if b.period != "session" and (b.scope == "global" or _literal(b.match)):
            value = "*" if b.scope == "global" else str(b.match)
            w = window_for(b.period, now, tz)
            assert w is not None
            keys = [b.counter_prefix(value) + k for k in w.read_keys]
            t = store.totals(keys)
            if not t and ledger is not None and w.start is not None and _ledger_scope(b):
                spent = _ledger_spend(ledger, b, value, w, now, tz)
                out.append(BudgetStatus(b, value, w, spent, 0, tz))
                continue
            out.append(
                BudgetStatus(b, value, w, sum(v[0] for v in t.values()), sum(v[1] for v in t.values()), tz)
            )
            continue
        grouped: dict[str, list[int]] = {}
        windows: dict[str, Window | None] = {}
        for key, (spent, reserved) in store.scan(f"{b.name.replace('|', '%7C')}|").items():
            got = _spec_of(b, key, now, tz)
            if got is None:
                continue
            value, w, _ = got
            if b.period == "session" and b.scope != "session":
                value = f"{value} / {key.rsplit('session:', 1)[-1]}"
            acc = grouped.setdefault(value, [0, 0])
            acc[0] += spent
            acc[1] += reserved
            windows[value] = w
        rows = [BudgetStatus(b, v, windows[v], s, r, tz) for v, (s, r) in grouped.items()]
        out.extend(sorted(rows, key=lambda r: -r.spent)[:max_values])
    return out
