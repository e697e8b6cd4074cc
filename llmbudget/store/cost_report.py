"""The cost report (`Ledger.costs`): sums by time bucket or dimension from the rollups, raw events at the edges.

The report's range is planned (`llmbudget/store/buckets.py`) into whole days read from
`rollup_daily`, whole hours from `rollup_hourly` and the rest from the events table, then
summed per bucket or per value of the grouping dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from ..errors import ValidationError
from .base import DIMENSIONS, TIME_BUCKETS, CostRow
from .buckets import US_PER_HOUR, Plan, merge_ranges, plan, to_us
from .connection import DB, Connections
from .rows import ROLLUP_FIELDS, SUM_COLUMNS, check_filter, column

_ROLLUP_SUMS_SQL = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)
_RAW_SUMS_SQL = (
    "COUNT(*), SUM(input_tokens), SUM(cached_input_tokens), SUM(cache_write_tokens), "
    "SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_nano), "
    "SUM(CASE WHEN cost_nano IS NULL THEN 1 ELSE 0 END)"
)

#: (plan piece, grouping value) -> the sums of `SUM_COLUMNS`
_Totals = dict[tuple[int, str | None], list[int]]


class CostReports(Connections):
    """Part of `SQLLedger`: the cost report over rollups and raw events."""

    def costs(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        by: str | None = None,
        tz: ZoneInfo | None = None,
        filters: dict[str, str] | None = None,
    ) -> list[CostRow]:
        tz = tz or ZoneInfo("UTC")
        by = by.replace("-", "_") if by else None
        if by is not None and by not in DIMENSIONS and by not in TIME_BUCKETS:
            raise ValidationError(
                "by", f"cannot group by {by!r}; one of {', '.join((*DIMENSIONS, *TIME_BUCKETS))}"
            )
        filters = {check_filter(k): v for k, v in (filters or {}).items()}
        unit = by if by in TIME_BUCKETS else None
        dim = by if by in DIMENSIONS else None
        use_rollups = (dim is None or dim in ROLLUP_FIELDS) and all(
            k in ROLLUP_FIELDS and v is not None for k, v in filters.items()
        )
        with self._read() as db:
            # The range is cut to the hours that hold events (two index look-ups): a report from
            # 0001-01-03 would otherwise plan, and query, hundreds of thousands of empty days.
            lo, hi = db.execute("SELECT (SELECT MIN(ts_us) FROM events), (SELECT MAX(ts_us) FROM events)")[0]
            if lo is None:
                return []
            first, last = int(lo) // US_PER_HOUR * US_PER_HOUR, (int(hi) // US_PER_HOUR + 1) * US_PER_HOUR
            start = max(to_us(since), first) if since is not None else first
            end = min(to_us(until), last) if until is not None else last
            if end <= start:
                return []
            p = plan(start, end, unit, tz, use_rollups=use_rollups)
            totals: _Totals = {}
            self._costs_rollup(db, p, "rollup_hourly", "hour", p.hours, dim, filters, totals, p.piece_of_hour)
            self._costs_rollup(db, p, "rollup_daily", "day", p.days, dim, filters, totals, p.piece_of_day)
            self._costs_raw(db, p, dim, filters, totals)
        rows: dict[str | None, CostRow] = {}
        for (piece, k), sums in totals.items():
            key = p.pieces[piece][2] if unit else (k if k != "" else None)
            row = rows.get(key)
            if row is None:
                row = rows[key] = CostRow(key=key)
            row.calls += int(sums[0])
            row.input_tokens += int(sums[1])
            row.cached_input_tokens += int(sums[2])
            row.cache_write_tokens += int(sums[3])
            row.output_tokens += int(sums[4])
            row.reasoning_tokens += int(sums[5])
            row.cost_nano += int(sums[6])
            row.unpriced_calls += int(sums[7])
        out = [r for r in rows.values() if r.calls]
        if unit:
            out.sort(key=lambda r: r.key or "")
        else:
            out.sort(key=lambda r: (-r.cost_nano, -r.calls, r.key is None, r.key or ""))
        return out

    def _costs_rollup(
        self,
        db: DB,
        p: Plan,
        table: str,
        bucket: str,
        ranges: list[tuple[int, int, int]],
        dim: str | None,
        filters: dict[str, str],
        totals: _Totals,
        piece_of: Callable[[int], int],
    ) -> None:
        if not ranges:
            return
        merged = merge_ranges(ranges)
        conds = " OR ".join(f"({bucket} >= ? AND {bucket} < ?)" for _ in merged)
        params: list[object] = [x for r in merged for x in r]
        where = f"({conds})"
        for k, v in filters.items():
            where += f" AND {column(k)} = ?"
            params.append(v)
        if dim is None:  # time buckets: per hour/day, mapped to pieces here
            sql = f"SELECT {bucket}, {_ROLLUP_SUMS_SQL} FROM {table} WHERE {where} GROUP BY {bucket}"
            for r in db.execute(sql, params):
                _add(totals, (piece_of(int(r[0])), None), r[1:])
        else:  # one piece: group by the dimension only
            sql = (
                f"SELECT {column(dim)}, {_ROLLUP_SUMS_SQL} FROM {table} WHERE {where} GROUP BY {column(dim)}"
            )
            for r in db.execute(sql, params):
                _add(totals, (0, r[0]), r[1:])

    def _costs_raw(
        self,
        db: DB,
        p: Plan,
        dim: str | None,
        filters: dict[str, str],
        totals: _Totals,
    ) -> None:
        extra = ""
        fparams: list[object] = []
        for k, v in filters.items():
            if v is None:
                extra += f" AND {column(k)} IS NULL"
            else:
                extra += f" AND {column(k)} = ?"
                fparams.append(v)
        key_sql = column(dim) if dim else "NULL"
        group = f" GROUP BY {column(dim)}" if dim else ""
        for i in range(0, len(p.raw), 100):
            parts: list[str] = []
            params: list[object] = []
            for a, b, piece in p.raw[i : i + 100]:
                parts.append(
                    f"SELECT {int(piece)}, {key_sql}, {_RAW_SUMS_SQL} FROM events "
                    f"WHERE ts_us >= ? AND ts_us < ?{extra}{group}"
                )
                params += [a, b, *fparams]
            for r in db.execute(" UNION ALL ".join(parts), params):
                if r[2]:
                    _add(totals, (int(r[0]), r[1]), r[2:])


def _add(totals: _Totals, key: tuple[int, str | None], sums: Sequence[int | Decimal | None]) -> None:
    acc = totals.get(key)
    vals = [int(v or 0) for v in sums]
    if acc is None:
        totals[key] = vals
    else:
        for i, v in enumerate(vals):
            acc[i] += v
