"""Planning a cost report over the rollups: time buckets in a timezone, split into rollup and raw pieces.

How `Ledger.costs` stays exact and fast
---------------------------------------
Events are stored with integer epoch-microsecond timestamps. Writes keep two rollups current:
`rollup_hourly` keyed by the UTC hour (`ts_us // 3600e6`) and `rollup_daily` keyed by the UTC
day (`ts_us // 86400e6`), each with the report dimensions. A report range `[since, until)` is:

1. cut into *pieces* at the boundaries of the requested time bucket (hour, local day, ISO week,
   month) computed in the report's timezone with `zoneinfo`, so DST changes move the boundary
   to the right UTC instant (a local day is 23 or 25 hours long across a switch). Grouping by a
   dimension instead gives one piece, the whole range;
2. each piece is decomposed into: whole UTC days inside it (read from `rollup_daily`), whole UTC
   hours at its edges (read from `rollup_hourly`), and partial hours at its very edges (read
   from the raw `events` table with a time-range scan, the only raw reads).

A piece that starts at a whole UTC hour needs no raw scan at all. That is the case for every
bucket boundary in zones whose offset is a whole number of hours (Europe/Berlin, America/New_York,
UTC, on either side of a DST change) and for `since`/`until` given on the hour. Zones with
half- or quarter-hour offsets (Asia/Kolkata +05:30, Asia/Kathmandu +05:45) cut hours in two: those
half hours are read from raw events, so the result stays exact, at the price of a small indexed
scan per boundary. A month of `costs(by="backend")` in Berlin reads about 29 daily rollup days plus
about 24 hourly rollup hours per month edge and no raw events.

An hour key (`YYYY-MM-DDTHH`) that occurs twice in a local night when clocks go back groups both
hours under one key.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    """An aware datetime as integer epoch microseconds (exact)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    """Integer epoch microseconds as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def bucket_key(us: int, unit: str, tz: ZoneInfo) -> str:
    """The report key of the bucket holding instant `us`: hour, day, ISO week or month in `tz`."""
    local = from_us(us).astimezone(tz)
    if unit == "day":
        return local.date().isoformat()
    if unit == "month":
        return f"{local.year:04d}-{local.month:02d}"
    if unit == "week":
        y, w, _ = local.isocalendar()
        return f"{y:04d}-W{w:02d}"
    if unit == "hour":
        return f"{local.date().isoformat()}T{local.hour:02d}"
    raise ValueError(f"unknown time bucket {unit!r}")


def _local_start_us(naive: datetime, tz: ZoneInfo) -> int:
    # fold=0: in a gap the wall time maps to the instant the clock jumps over, which is the
    # first instant of the new bucket; ambiguous midnights take their first occurrence
    return to_us(naive.replace(tzinfo=tz))


def next_boundary(us: int, unit: str, tz: ZoneInfo) -> int:
    """The first instant after `us` that starts a new bucket of `unit` in `tz`."""
    local = from_us(us).astimezone(tz).replace(tzinfo=None)
    if unit == "hour":
        nxt = local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    elif unit == "day":
        nxt = datetime.combine(local.date() + timedelta(days=1), datetime.min.time())
    elif unit == "week":
        d = local.date()
        nxt = datetime.combine(d + timedelta(days=7 - d.weekday()), datetime.min.time())
    elif unit == "month":
        y, m = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        nxt = datetime.combine(date(y, m, 1), datetime.min.time())
    else:
        raise ValueError(f"unknown time bucket {unit!r}")
    cand = _local_start_us(nxt, tz)
    if cand <= us:  # a repeated wall hour (clocks going back): move on by real time
        cand = us + US_PER_HOUR - (us % US_PER_HOUR if unit == "hour" else 0)
    return cand


@dataclass(slots=True)
class Plan:
    """Where each part of a report range is read from; every part points at its piece (bucket)."""

    #: (start_us, end_us, key) of each bucket piece, in time order
    pieces: list[tuple[int, int, str | None]] = field(default_factory=list)
    #: (first_hour, end_hour, piece) ranges of UTC hour indexes read from rollup_hourly
    hours: list[tuple[int, int, int]] = field(default_factory=list)
    #: (first_day, end_day, piece) ranges of UTC day indexes read from rollup_daily
    days: list[tuple[int, int, int]] = field(default_factory=list)
    #: (start_us, end_us, piece) ranges read from raw events
    raw: list[tuple[int, int, int]] = field(default_factory=list)

    def piece_of_hour(self, hour: int) -> int:
        return _lookup(self.hours, hour)

    def piece_of_day(self, day: int) -> int:
        return _lookup(self.days, day)


def _lookup(ranges: list[tuple[int, int, int]], x: int) -> int:
    i = bisect_right(ranges, (x, float("inf"), 0)) - 1
    lo, hi, piece = ranges[i]
    if not lo <= x < hi:
        raise KeyError(x)
    return piece


def _ceil(x: int, step: int) -> int:
    return -(-x // step) * step


def _floor(x: int, step: int) -> int:
    return x // step * step


def plan(start_us: int, end_us: int, unit: str | None, tz: ZoneInfo, *, use_rollups: bool = True) -> Plan:
    """Split [start_us, end_us) into bucket pieces and each piece into daily, hourly and raw parts."""
    p = Plan()
    if end_us <= start_us:
        return p
    cur = start_us
    while cur < end_us:
        if unit is None:
            nxt, key = end_us, None
        else:
            key = bucket_key(cur, unit, tz)
            nxt = min(next_boundary(cur, unit, tz), end_us)
        p.pieces.append((cur, nxt, key))
        cur = nxt
    for idx, (a, b, _) in enumerate(p.pieces):
        if not use_rollups:
            p.raw.append((a, b, idx))
            continue
        ha, hb = _ceil(a, US_PER_HOUR), _floor(b, US_PER_HOUR)
        if ha >= hb:
            p.raw.append((a, b, idx))
            continue
        if a < ha:
            p.raw.append((a, ha, idx))
        da, db = _ceil(ha, US_PER_DAY), _floor(hb, US_PER_DAY)
        if da < db:
            if ha < da:
                p.hours.append((ha // US_PER_HOUR, da // US_PER_HOUR, idx))
            p.days.append((da // US_PER_DAY, db // US_PER_DAY, idx))
            if db < hb:
                p.hours.append((db // US_PER_HOUR, hb // US_PER_HOUR, idx))
        else:
            p.hours.append((ha // US_PER_HOUR, hb // US_PER_HOUR, idx))
        if hb < b:
            p.raw.append((hb, b, idx))
    return p


def merge_ranges(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Adjacent or overlapping (start, end, _) ranges merged, for compact SQL conditions."""
    out: list[tuple[int, int]] = []
    for a, b, _ in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
