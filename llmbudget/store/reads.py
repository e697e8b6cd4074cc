"""Reading events back: one by id, filtered pages, a lazy scan, counts, sessions and unpriced models.

A filter on a rollup dimension first asks the rollups which hours can hold matches
(`_hour_ranges`), so a rare value never scans months of raw events. Cost totals are
`llmbudget/store/cost_report.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from ..errors import ValidationError
from ..events import UsageEvent
from .base import SessionRow, UnpricedModel
from .buckets import US_PER_DAY, US_PER_HOUR, from_us, to_us
from .connection import DB, Connections
from .rows import EVENT_COLUMNS, ROLLUP_FIELDS, check_filter, column, row_to_event, time_range

_CHUNK = 500  # names per IN (...) list


class EventReads(Connections):
    """Part of `SQLLedger`: every read of the events, sessions and session agents tables."""

    def get(self, event_id: str) -> UsageEvent | None:
        with self._read() as db:
            rows = db.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?", (event_id,))
        return row_to_event(rows[0]) if rows else None

    @staticmethod
    def _where(
        since: datetime | None, until: datetime | None, filters: dict[str, str] | None
    ) -> tuple[str, list[object]]:
        conds, params = time_range(since, until)
        for k, v in (filters or {}).items():
            k = check_filter(k)
            if v is None:
                conds.append(f"{column(k)} IS NULL")
            else:
                conds.append(f"{column(k)} = ?")
                params.append(v)
        return (" WHERE " + " AND ".join(conds)) if conds else "", params

    def _hour_ranges(
        self,
        db: DB,
        since: datetime | None,
        until: datetime | None,
        filters: dict[str, str] | None,
        newest_first: bool,
    ) -> Iterator[tuple[int, int]] | None:
        """Event-time ranges that can hold matches, from the rollups; None when the filters cannot narrow.

        The events table is indexed on time (and on session and task id), not on every attribution
        field: each index costs ingest speed. A filter on a rollup dimension (agent, user, team,
        model, ...) instead asks `rollup_daily` which UTC days have matching events, then
        `rollup_hourly` which hours of those days, so a rare or misspelt value never scans months
        of raw events. Ranges are clipped to [since, until) and yielded lazily, day by day.
        """
        named = ((check_filter(k), v) for k, v in (filters or {}).items())
        dims = [(column(k), v) for k, v in named if v is not None and k in ROLLUP_FIELDS]
        if not dims:
            return None
        lo = to_us(since) if since is not None else None
        hi = to_us(until) if until is not None else None
        cond = "".join(f" AND {c} = ?" for c, _ in dims)
        vals = [v for _, v in dims]
        day_sql = f"SELECT DISTINCT day FROM rollup_daily WHERE day >= ? AND day <= ?{cond}"
        day_params = [
            -(1 << 62) if lo is None else lo // US_PER_DAY,
            (1 << 62) if hi is None else (hi - 1) // US_PER_DAY,
            *vals,
        ]
        days = sorted((int(r[0]) for r in db.execute(day_sql, day_params)), reverse=newest_first)
        hour_sql = f"SELECT DISTINCT hour FROM rollup_hourly WHERE hour >= ? AND hour < ?{cond}"
        hours_per_day = US_PER_DAY // US_PER_HOUR

        def ranges() -> Iterator[tuple[int, int]]:
            for day in days:
                hours = sorted(
                    int(r[0])
                    for r in db.execute(hour_sql, [day * hours_per_day, (day + 1) * hours_per_day, *vals])
                )
                merged: list[list[int]] = []
                for h in hours:  # consecutive hours become one range
                    if merged and merged[-1][1] == h * US_PER_HOUR:
                        merged[-1][1] = (h + 1) * US_PER_HOUR
                    else:
                        merged.append([h * US_PER_HOUR, (h + 1) * US_PER_HOUR])
                for a, b in reversed(merged) if newest_first else merged:
                    a = a if lo is None else max(a, lo)
                    b = b if hi is None else min(b, hi)
                    if a < b:
                        yield a, b

        return ranges()

    def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> list[UsageEvent]:
        if limit is not None and limit < 0:
            raise ValidationError("limit", "must not be negative")
        where, params = self._where(since, until, filters)
        order = "DESC" if newest_first else "ASC"
        cols = ", ".join(EVENT_COLUMNS)
        with self._read() as db:
            ranges = self._hour_ranges(db, since, until, filters, newest_first)
            if ranges is None:
                sql = f"SELECT {cols} FROM events{where} ORDER BY ts_us {order}, id {order}"
                if limit is not None:
                    sql += " LIMIT ?"
                    params.append(int(limit))
                return [row_to_event(r) for r in db.execute(sql, params)]
            fwhere, fparams = self._where(None, None, filters)
            sql = f"SELECT {cols} FROM events{fwhere} AND ts_us >= ? AND ts_us < ? ORDER BY ts_us {order}, id {order}"
            out: list[UsageEvent] = []
            for a, b in ranges:
                if limit is None:
                    rows = db.execute(sql, [*fparams, a, b])
                elif len(out) < limit:
                    rows = db.execute(sql + " LIMIT ?", [*fparams, a, b, int(limit) - len(out)])
                else:
                    break
                out.extend(row_to_event(r) for r in rows)
            return out

    def recorded_elsewhere(self, since: datetime, limit: int = 5000) -> list[UsageEvent]:
        """One read of the partial index `events_not_proxy_ts`, whatever the proxy's traffic."""
        cols = ", ".join(EVENT_COLUMNS)
        sql = (
            f"SELECT {cols} FROM events WHERE source <> 'proxy' AND ts_us >= ? "
            "ORDER BY ts_us DESC, id DESC LIMIT ?"
        )
        with self._read() as db:
            return [row_to_event(r) for r in db.execute(sql, [to_us(since), int(limit)])]

    def iter_events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
        batch: int = 5000,
    ) -> Iterator[UsageEvent]:
        with self._read() as db:
            ranges = self._hour_ranges(db, since, until, filters, False)
            spans = None if ranges is None else list(ranges)
        if spans is None:
            yield from self._iter_range(since, until, filters, batch)
            return
        for a, b in spans:
            yield from self._iter_range(from_us(a), from_us(b), filters, batch)

    def _iter_range(
        self, since: datetime | None, until: datetime | None, filters: dict[str, str] | None, batch: int
    ) -> Iterator[UsageEvent]:
        where, params = self._where(since, until, filters)
        cols = ", ".join(EVENT_COLUMNS)
        last: tuple[int, str] | None = None
        while True:
            if last is None:
                sql, p = f"SELECT {cols} FROM events{where} ORDER BY ts_us, id LIMIT ?", [*params, batch]
            else:
                joiner = " AND " if where else " WHERE "
                sql = (
                    f"SELECT {cols} FROM events{where}{joiner}(ts_us > ? OR (ts_us = ? AND id > ?)) "
                    "ORDER BY ts_us, id LIMIT ?"
                )
                p = [*params, last[0], last[0], last[1], batch]
            with self._read() as db:
                rows = db.execute(sql, p)
            for r in rows:
                yield row_to_event(r)
            if len(rows) < batch:
                return
            last = (int(rows[-1][1]), rows[-1][0])

    def count(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
    ) -> int:
        where, params = self._where(since, until, filters)
        with self._read() as db:
            ranges = self._hour_ranges(db, since, until, filters, False)
            if ranges is None:
                return int(db.execute(f"SELECT COUNT(*) FROM events{where}", params)[0][0])
            fwhere, fparams = self._where(None, None, filters)
            sql = f"SELECT COUNT(*) FROM events{fwhere} AND ts_us >= ? AND ts_us < ?"
            return sum(int(db.execute(sql, [*fparams, a, b])[0][0]) for a, b in ranges)

    def sessions(self, *, limit: int = 30, since: datetime | None = None) -> list[SessionRow]:
        sql = (
            "SELECT session, first_us, last_us, calls, input_tokens, output_tokens, cost_nano, unpriced_calls "
            "FROM sessions"
        )
        params: list[object] = []
        if since is not None:
            sql += " WHERE last_us >= ?"
            params.append(to_us(since))
        sql += " ORDER BY last_us DESC, session LIMIT ?"
        params.append(int(limit))
        with self._read() as db:
            rows = db.execute(sql, params)
            agents: dict[str, list[str]] = {}
            names = [r[0] for r in rows]
            for i in range(0, len(names), _CHUNK):
                chunk = names[i : i + _CHUNK]
                for s, a in db.execute(
                    f"SELECT session, agent FROM session_agents WHERE session IN "
                    f"({', '.join('?' * len(chunk))}) ORDER BY session, agent",
                    chunk,
                ):
                    agents.setdefault(s, []).append(a)
        return [
            SessionRow(
                session=r[0],
                start=from_us(int(r[1])),
                end=from_us(int(r[2])),
                calls=int(r[3]),
                input_tokens=int(r[4]),
                output_tokens=int(r[5]),
                cost_nano=int(r[6]),
                unpriced_calls=int(r[7]),
                agents=agents.get(r[0], []),
            )
            for r in rows
        ]

    def unpriced_models(self) -> list[UnpricedModel]:
        sql = (
            "SELECT provider, model, COUNT(*), SUM(input_tokens), SUM(output_tokens), MIN(ts_us), MAX(ts_us) "
            "FROM events WHERE cost_nano IS NULL GROUP BY provider, model"
        )
        with self._read() as db:
            rows = db.execute(sql)
        out = [
            UnpricedModel(
                provider=r[0],
                model=r[1],
                calls=int(r[2]),
                input_tokens=int(r[3]),
                output_tokens=int(r[4]),
                first_seen=from_us(int(r[5])),
                last_seen=from_us(int(r[6])),
            )
            for r in rows
        ]
        out.sort(key=lambda m: (-m.calls, m.provider, m.model))
        return out
