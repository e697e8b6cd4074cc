"""A new budget counter starts from what the ledger already says was spent in its window.

Usage can reach the ledger without the gate: imports (Claude Code logs, JSONL), `wrap()` without
a gate, events recorded before budgets were configured or before a limit was added. So when a
(budget, scope value, window) counter is first created, its `spent` is seeded from the ledger,
exactly (nano-USD or tokens), in the same atomic step that creates it:

- SQLite and PostgreSQL counters live in the ledger's database: the seed is a scalar SQL
  expression evaluated inside the `INSERT` that creates the row (`WHERE NOT EXISTS`, and `ON
  CONFLICT DO NOTHING` on PostgreSQL), so exactly one process seeds and the row is never
  re-seeded;
- Redis counters are seeded by the reservation script only when the counter hash does not exist
  yet (`LedgerSeeder` reads the amount from the ledger's database just before).

Gated calls are never counted twice: they settle into a counter that exists already (the
reservation created it), and a counter is seeded once, when it is created, never again.

Where the spend is read from: the hourly and daily rollups (backend, model, agent, user, team,
task type scopes and the global one), cut exactly at the window's edges with the same planner
as `llmbudget costs` (raw events for partial hours); session-scoped counters from the raw events
(indexed by session). Local calls (`price_status = 'local'`) never count, as in enforcement.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from ..attribution_table import BY_NAME, SCOPE_FIELDS
from ..store.buckets import merge_ranges, plan, to_us
from ..store.dialect import Param, pg_sql
from .rules import Budget
from .windows import Window, rolling_bucket_seconds

log = logging.getLogger("llmbudget.budget")

#: ledger column of each budget scope (the rollups store `user` as `user_name`)
SCOPE_COLUMN = {
    "backend": "backend",
    "model": "model",
    **{scope: BY_NAME[field].column for scope, field in SCOPE_FIELDS.items()},
}
#: scopes that are not rollup dimensions: their seeds read raw events (each has an index)
RAW_COLUMNS = frozenset({"session", "key"})


@dataclass(frozen=True, slots=True)
class SeedSpec:
    """Where one counter's starting spend is read from: a time range and exact column filters."""

    #: usd (sum of cost_nano) | tokens (sum of input + output tokens)
    unit: str
    #: [start_us, end_us) in epoch microseconds; None: all time (session windows)
    start_us: int | None
    end_us: int | None
    #: (ledger column, value) pairs that must all match
    filters: tuple[tuple[str, str], ...] = ()

    @property
    def raw(self) -> bool:
        """Session and key filters are not in the rollups: read raw events (indexed on both)."""
        return self.start_us is None or any(c in RAW_COLUMNS for c, _ in self.filters)


def spec_for(budget: Budget, value: str, window: Window, read_key: str, session: str | None) -> SeedSpec:
    """The seed of the counter of `budget` for scope `value` and one of `window`'s read keys."""
    filters: list[tuple[str, str]] = []
    if budget.scope != "global":
        filters.append((SCOPE_COLUMN[budget.scope], value))
    if window.period == "session":
        if budget.scope != "session" and session:
            filters.append(("session", session))
        return SeedSpec(budget.unit, None, None, tuple(filters))
    if (
        window.period.endswith("h") and window.period[:-1].isdigit()
    ):  # rolling: one bucket per read key, "5h:<epoch seconds>"
        start = int(read_key.rsplit(":", 1)[1])
        size = rolling_bucket_seconds(int(window.period[:-1]))
        return SeedSpec(budget.unit, start * 1_000_000, (start + size) * 1_000_000, tuple(filters))
    assert window.start is not None and window.end is not None  # only a session's window has none
    return SeedSpec(budget.unit, to_us(window.start), to_us(window.end), tuple(filters))


def _measure(unit: str) -> str:
    return "cost_nano" if unit == "usd" else "input_tokens + output_tokens"


def seed_sql(spec: SeedSpec) -> tuple[str, list[Param]]:
    """A scalar SQL expression (`?` placeholders) worth the spend the ledger holds for `spec`."""
    measure = _measure(spec.unit)
    cond = "price_status <> 'local'"
    fparams: list[Param] = []
    for col, val in spec.filters:
        cond += f" AND {col} = ?"
        fparams.append(val)
    if spec.raw:
        sql = f"SELECT COALESCE(SUM({measure}), 0) FROM events WHERE {cond}"
        params = list(fparams)
        if spec.start_us is not None and spec.end_us is not None:
            sql += " AND ts_us >= ? AND ts_us < ?"
            params += [spec.start_us, spec.end_us]
        return f"({sql})", params
    assert spec.start_us is not None and spec.end_us is not None
    p = plan(spec.start_us, spec.end_us, None, ZoneInfo("UTC"))
    parts: list[str] = []
    params = []
    for table, bucket, ranges in (("rollup_daily", "day", p.days), ("rollup_hourly", "hour", p.hours)):
        for lo, hi in merge_ranges(ranges):
            parts.append(
                f"(SELECT COALESCE(SUM({measure}), 0) FROM {table} WHERE {bucket} >= ? AND {bucket} < ? "
                f"AND {cond})"
            )
            params += [lo, hi, *fparams]
    for a, b, _ in p.raw:
        parts.append(
            f"(SELECT COALESCE(SUM({measure}), 0) FROM events WHERE ts_us >= ? AND ts_us < ? AND {cond})"
        )
        params += [a, b, *fparams]
    return ("(" + " + ".join(parts) + ")") if parts else "0", params


def values_sql(column: str, start_us: int, end_us: int) -> tuple[str, list[Param]]:
    """Distinct non-empty values of a ledger column with non-local calls in [start_us, end_us) (status listing)."""
    p = plan(start_us, end_us, None, ZoneInfo("UTC"))
    parts: list[str] = []
    params: list[Param] = []
    cond = f"{column} <> '' AND price_status <> 'local'"
    for table, bucket, ranges in (("rollup_daily", "day", p.days), ("rollup_hourly", "hour", p.hours)):
        for lo, hi in merge_ranges(ranges):
            parts.append(
                f"SELECT DISTINCT {column} FROM {table} WHERE {bucket} >= ? AND {bucket} < ? AND {cond}"
            )
            params += [lo, hi]
    for a, b, _ in p.raw:
        parts.append(f"SELECT DISTINCT {column} FROM events WHERE ts_us >= ? AND ts_us < ? AND {cond}")
        params += [a, b]
    return " UNION ".join(parts) or f"SELECT {column} FROM events WHERE 1 = 0", params


def has_ledger_tables(
    execute: Callable[[str, list[Param]], Sequence[tuple[Any, ...]]], *, postgres: bool = False
) -> bool:
    """True when the database holds the ledger's tables (a counters-only file seeds nothing).

    Asked of the catalog, so a database that cannot be read (locked, connection lost) raises
    instead of passing for an empty ledger: enforcement must never run silently at zero.
    """
    if postgres:
        rows = execute(
            "SELECT to_regclass('rollup_hourly') IS NOT NULL AND to_regclass('events') IS NOT NULL", []
        )
        return bool(rows[0][0])
    rows = execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('rollup_hourly', 'events')", []
    )
    return int(rows[0][0]) == 2


#: pending settlements of one counter, split by what the ledger already holds (see `budget.counters`):
#: an amount counts until its event is in the ledger, a kept worst case until the event is priced.
#: One index lookup per pending row, whatever the planner knows: a join let PostgreSQL without table
#: statistics (autovacuum off, or a new database) hash the whole events table at every reconciliation
PENDING_SUMS_SQL = (
    "SELECT COALESCE(SUM(CASE WHEN q.amount = 0 OR q.s IS NOT NULL THEN 0 ELSE q.amount END), 0) AS un, "
    "COALESCE(SUM(CASE WHEN q.kept = 0 OR q.s = 2 THEN 0 ELSE q.kept END), 0) AS kept "
    "FROM (SELECT p.amount, p.kept, (SELECT CASE WHEN e.cost_nano IS NULL THEN 1 ELSE 2 END "
    "FROM events e WHERE e.id = p.event_id) AS s FROM budget_pending p WHERE p.counter = ?) AS q"
)
#: without a ledger in the same database every pending settlement counts
PENDING_SUMS_NO_LEDGER_SQL = "SELECT COALESCE(SUM(amount), 0) AS un, COALESCE(SUM(kept), 0) AS kept FROM budget_pending WHERE counter = ?"


def counter_sums_sql(spec: SeedSpec | None, key: str, ledger: bool) -> tuple[str, list[Param]]:
    """One statement (one snapshot) giving (ledger spend, pending not in the ledger, kept) of a counter."""
    expr, params = seed_sql(spec) if ledger and spec is not None else ("0", [])
    sums = PENDING_SUMS_SQL if ledger else PENDING_SUMS_NO_LEDGER_SQL
    return f"SELECT {expr}, s.un, s.kept FROM ({sums}) AS s", [*params, key]


class LedgerSeeder:
    """Reads seeds from a ledger in another database than the counters (Redis counters)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._conn: Any = None
        self._pg = db_url.startswith(("postgresql://", "postgres://"))
        self._ok = False
        self._lock = threading.Lock()

    def _execute(self, sql: str, params: Sequence[Param]) -> list[tuple[Any, ...]]:
        with self._lock:  # one connection shared by the gate's worker threads
            try:
                return self._execute_locked(sql, params)
            except Exception:
                self._drop()  # a broken connection is opened again next time
                raise

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._conn.close()
            self._conn = None

    def _execute_locked(self, sql: str, params: Sequence[Param]) -> list[tuple[Any, ...]]:
        if self._conn is None:
            if self._pg:
                import psycopg  # the optional `postgres` extra

                self._conn = psycopg.connect(self.db_url, autocommit=True, connect_timeout=10)
            else:
                path = (
                    self.db_url[len("sqlite:///") :] if self.db_url.startswith("sqlite:///") else self.db_url
                )
                self._conn = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        if self._pg:
            return list(self._conn.execute(pg_sql(sql), params).fetchall())
        return list(self._conn.execute(sql, params).fetchall())

    def _ledger(self) -> bool:
        # asked until the ledger exists (a serve started before `db migrate` finds it later);
        # any error reading the catalog propagates: the caller fails closed
        if not self._ok:
            self._ok = has_ledger_tables(self._execute, postgres=self._pg)
        return self._ok

    def amounts(self, specs: dict[str, SeedSpec]) -> dict[str, int]:
        """The seed of each counter key (0 when the database holds no ledger yet)."""
        if not specs:
            return {}
        if not self._ledger():
            return dict.fromkeys(specs, 0)
        out: dict[str, int] = {}
        for key, spec in specs.items():
            expr, params = seed_sql(spec)
            out[key] = int(self._execute(f"SELECT {expr}", params)[0][0])
        return out

    def ledgered(self, ids: list[str]) -> dict[str, bool]:
        """Which event ids the ledger holds, each mapped to whether it is priced (cost known)."""
        if not ids or not self._ledger():
            return {}
        out: dict[str, bool] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for eid, cost in self._execute(f"SELECT id, cost_nano FROM events WHERE id IN ({marks})", part):
                out[str(eid)] = cost is not None
        return out

    def values(self, column: str, start_us: int, end_us: int) -> list[str]:
        if not self._ledger():
            return []
        sql, params = values_sql(column, start_us, end_us)
        return [str(r[0]) for r in self._execute(sql, params)]

    def close(self) -> None:
        with self._lock:
            self._drop()
