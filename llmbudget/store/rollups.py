"""The rollups and sessions tables kept in step with the events: sums added at commit, corrected on re-pricing.

`rollup_hourly` and `rollup_daily` hold per-bucket sums for every combination of the rollup
dimensions, `sessions` and `session_agents` one row per session. The writer's commit adds a
batch's new rows to them (`_upsert_rollups`, `_apply_sessions`, in the same transaction);
`update_costs` changes recorded costs and moves the sums by the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from ..errors import ValidationError
from ..events import PRICE_STATUSES
from .buckets import US_PER_DAY, US_PER_HOUR
from .connection import DB, Connections
from .migrations import ROLLUP_DIMS
from .rows import EVENT_COLUMNS, SUM_COLUMNS

_CHUNK = 500  # ids per IN (...) list


def _sums_of(ev_row: Sequence[Any]) -> list[int]:
    # ev_row in EVENT_COLUMNS order
    cost = ev_row[11]
    return [1, ev_row[6], ev_row[7], ev_row[8], ev_row[9], ev_row[10], cost or 0, 1 if cost is None else 0]


_dim_values = itemgetter(*(EVENT_COLUMNS.index(c) for c in ROLLUP_DIMS))


def _dims_of(ev_row: Sequence[Any]) -> tuple[str, ...]:
    return tuple([v or "" for v in _dim_values(ev_row)])


def hourly_of(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[int]]:
    """Hourly rollup sums of new event rows, keyed by (hour, *dims): one pass, no per-event lists."""
    raw: dict[tuple[Any, ...], list[int]] = {}
    for r in rows:
        key = (r[1] // US_PER_HOUR, _dim_values(r))
        acc = raw.get(key)
        cost = r[11]
        if acc is None:
            raw[key] = [1, r[6], r[7], r[8], r[9], r[10], cost or 0, 1 if cost is None else 0]
        else:
            acc[0] += 1
            acc[1] += r[6]
            acc[2] += r[7]
            acc[3] += r[8]
            acc[4] += r[9]
            acc[5] += r[10]
            if cost is None:
                acc[7] += 1
            else:
                acc[6] += cost
    # rollup keys hold '' for "not set"; two raw keys differing only in None vs '' share a row
    out: dict[tuple[Any, ...], list[int]] = {}
    for (hour, dims), sums in raw.items():
        key = (hour, *[v or "" for v in dims])
        acc = out.get(key)
        if acc is None:
            out[key] = sums
        else:
            for i, v in enumerate(sums):
                acc[i] += v
    return out


def _rollup_sql(name: str, bucket: str) -> tuple[str, str]:
    cols = (bucket, *ROLLUP_DIMS, *SUM_COLUMNS)
    upsert = (
        f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT ({bucket}, {', '.join(ROLLUP_DIMS)}) DO UPDATE SET "
        + ", ".join(f"{c} = {name}.{c} + excluded.{c}" for c in SUM_COLUMNS)
    )
    cond = " AND ".join(f"{c} = ?" for c in (bucket, *ROLLUP_DIMS))
    return upsert, f"DELETE FROM {name} WHERE {cond} AND calls = 0"


#: the same statement text every batch, so the driver's prepared-statement cache is hit
_ROLLUP_SQL = {
    "rollup_hourly": _rollup_sql("rollup_hourly", "hour"),
    "rollup_daily": _rollup_sql("rollup_daily", "day"),
}


class Rollups(Connections):
    """Part of `SQLLedger`: the rollups' and sessions' upkeep, and re-pricing recorded events."""

    #: SQL spelling of two-argument min/max
    _least = "MIN"
    _greatest = "MAX"

    def _apply_rollups(self, db: DB, items: list[tuple[int, tuple[str, ...], list[int]]]) -> None:
        """Add signed sums to the hourly and daily rollups: items are (ts_us, dims, sums)."""
        hourly: dict[tuple[Any, ...], list[int]] = {}
        for ts, dims, sums in items:
            key = (ts // US_PER_HOUR, *dims)
            acc = hourly.get(key)
            if acc is None:
                hourly[key] = list(sums)
            else:
                for i, v in enumerate(sums):
                    acc[i] += v
        self._upsert_rollups(db, hourly)

    def _upsert_rollups(self, db: DB, hourly: dict[tuple[Any, ...], list[int]]) -> None:
        """Add hourly sums (keyed by (hour, *dims)) to both rollups; rows summing to no calls are removed."""
        daily: dict[tuple[Any, ...], list[int]] = {}
        hours_per_day = US_PER_DAY // US_PER_HOUR
        for hkey, sums in hourly.items():
            key = (hkey[0] // hours_per_day, *hkey[1:])
            acc = daily.get(key)
            if acc is None:
                daily[key] = list(sums)
            else:
                for i, v in enumerate(sums):
                    acc[i] += v
        for name, table in (("rollup_hourly", hourly), ("rollup_daily", daily)):
            upsert, delete = _ROLLUP_SQL[name]
            # a fixed order keeps concurrent PostgreSQL writers from deadlocking on these rows
            keys = sorted(table)
            db.executemany(upsert, [(*k, *table[k]) for k in keys])
            emptied = [k for k in keys if table[k][0] < 0]
            if emptied:
                db.executemany(delete, emptied)

    def _apply_sessions(self, db: DB, rows: list[tuple[Any, ...]]) -> None:
        per: dict[str, list[int]] = {}
        agents: set[tuple[str, str]] = set()
        for r in rows:
            s = r[14]
            if not s:
                continue
            ts, cost = r[1], r[11]
            acc = per.get(s)
            if acc is None:
                per[s] = [ts, ts, 1, r[6], r[9], cost or 0, 1 if cost is None else 0]
            else:
                acc[0] = min(acc[0], ts)
                acc[1] = max(acc[1], ts)
                acc[2] += 1
                acc[3] += r[6]
                acc[4] += r[9]
                acc[5] += cost or 0
                acc[6] += 1 if cost is None else 0
            if r[13]:
                agents.add((s, r[13]))
        if per:
            db.executemany(
                "INSERT INTO sessions (session, first_us, last_us, calls, input_tokens, output_tokens, cost_nano, "
                "unpriced_calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session) DO UPDATE SET "
                f"first_us = {self._least}(sessions.first_us, excluded.first_us), "
                f"last_us = {self._greatest}(sessions.last_us, excluded.last_us), "
                "calls = sessions.calls + excluded.calls, "
                "input_tokens = sessions.input_tokens + excluded.input_tokens, "
                "output_tokens = sessions.output_tokens + excluded.output_tokens, "
                "cost_nano = sessions.cost_nano + excluded.cost_nano, "
                "unpriced_calls = sessions.unpriced_calls + excluded.unpriced_calls",
                [(s, *per[s]) for s in sorted(per)],
            )
        if agents:
            db.executemany(
                "INSERT INTO session_agents (session, agent) VALUES (?, ?) ON CONFLICT DO NOTHING",
                sorted(agents),
            )

    def update_costs(self, changes: Sequence[tuple[str, int | None, str]]) -> int:
        for event_id, nano, status in changes:
            if status not in PRICE_STATUSES:
                raise ValidationError("price_status", f"unknown price status {status!r} for event {event_id}")
            if nano is None and status in ("priced", "override"):
                raise ValidationError(
                    "cost_nano", f"is missing but price_status is {status!r} (event {event_id})"
                )
            if nano is not None and (not isinstance(nano, int) or nano < 0):
                raise ValidationError("cost_nano", f"must be a non-negative integer, got {nano!r}")
        changed = 0
        cols = ", ".join(EVENT_COLUMNS)
        for i in range(0, len(changes), _CHUNK):
            chunk = {c[0]: c for c in changes[i : i + _CHUNK]}
            with self._tx() as db:
                marks = ", ".join("?" * len(chunk))
                old = db.execute(f"SELECT {cols} FROM events WHERE id IN ({marks})", list(chunk))
                items: list[tuple[int, tuple[str, ...], list[int]]] = []
                updates: list[tuple[Any, ...]] = []
                sess: dict[str, list[int]] = {}
                for r in old:
                    _, nano, status = chunk[r[0]]
                    if r[11] == nano and r[12] == status:
                        continue
                    new = list(r)
                    new[11], new[12] = nano, status
                    items.append((r[1], _dims_of(r), [-v for v in _sums_of(r)]))
                    items.append((r[1], _dims_of(new), _sums_of(new)))
                    updates.append((nano, status, r[0]))
                    if r[14]:
                        d = sess.setdefault(r[14], [0, 0])
                        d[0] += (nano or 0) - (r[11] or 0)
                        d[1] += (1 if nano is None else 0) - (1 if r[11] is None else 0)
                if updates:
                    db.executemany("UPDATE events SET cost_nano = ?, price_status = ? WHERE id = ?", updates)
                    self._apply_rollups(db, items)
                    db.executemany(
                        "UPDATE sessions SET cost_nano = cost_nano + ?, unpriced_calls = unpriced_calls + ? "
                        "WHERE session = ?",
                        [(d[0], d[1], s) for s, d in sorted(sess.items())],
                    )
                changed += len(updates)
        return changed
