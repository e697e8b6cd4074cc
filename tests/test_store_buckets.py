"""The cost-report planner: bucket keys and boundaries in a timezone, rollup vs raw pieces."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.store.buckets import US_PER_DAY, US_PER_HOUR, bucket_key, from_us, next_boundary, plan, to_us

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")


def us(s: str) -> int:
    return to_us(datetime.fromisoformat(s))


def test_to_and_from_microseconds_are_exact() -> None:
    dt = datetime(2026, 3, 29, 1, 2, 3, 456789, tzinfo=UTC)
    assert from_us(to_us(dt)) == dt
    assert to_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0


@pytest.mark.parametrize(
    ("instant", "unit", "key"),
    [
        ("2026-03-29T00:59:59+00:00", "hour", "2026-03-29T01"),
        ("2026-03-29T01:00:00+00:00", "hour", "2026-03-29T03"),  # 02:00 does not exist in Berlin that day
        ("2026-12-31T23:30:00+00:00", "month", "2027-01"),
        ("2026-12-31T22:59:59+00:00", "week", "2026-W53"),
        ("2026-12-27T23:00:00+00:00", "week", "2026-W53"),  # Monday 00:00 local
        ("2026-12-27T22:59:59+00:00", "week", "2026-W52"),
    ],
)
def test_bucket_keys_in_berlin(instant: str, unit: str, key: str) -> None:
    assert bucket_key(us(instant), unit, BERLIN) == key


def test_day_boundaries_across_dst_are_23_and_25_hours() -> None:
    spring = next_boundary(us("2026-03-28T23:30:00+00:00"), "day", BERLIN)
    assert from_us(spring) == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)
    assert spring - us("2026-03-28T23:00:00+00:00") == 23 * US_PER_HOUR
    autumn = next_boundary(us("2026-10-24T22:30:00+00:00"), "day", BERLIN)
    assert autumn - us("2026-10-24T22:00:00+00:00") == 25 * US_PER_HOUR


def test_whole_hour_zones_need_no_raw_scans() -> None:
    p = plan(us("2026-03-01T00:00:00+01:00"), us("2026-05-01T00:00:00+02:00"), "month", BERLIN)
    assert p.raw == []
    assert [k for _, _, k in p.pieces] == ["2026-03", "2026-04"]
    days = sum(b - a for a, b, _ in p.days)
    hours = sum(b - a for a, b, _ in p.hours)
    assert days >= 58 and hours <= 4 * 24  # mostly daily rollups, hourly only at month edges


def test_half_hour_zone_reads_raw_at_each_boundary() -> None:
    p = plan(us("2026-03-01T00:00:00+05:30"), us("2026-03-04T00:00:00+05:30"), "day", KOLKATA)
    assert [k for _, _, k in p.pieces] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert all(b - a == US_PER_HOUR // 2 for a, b, _ in p.raw)
    assert len(p.raw) == 6


def test_ragged_range_grouped_by_dimension() -> None:
    p = plan(us("2026-03-01T10:15:00+00:00"), us("2026-03-05T08:20:00+00:00"), None, ZoneInfo("UTC"))
    assert [(from_us(a).isoformat(), from_us(b).isoformat()) for a, b, _ in p.raw] == [
        ("2026-03-01T10:15:00+00:00", "2026-03-01T11:00:00+00:00"),
        ("2026-03-05T08:00:00+00:00", "2026-03-05T08:20:00+00:00"),
    ]
    assert [(a * US_PER_DAY, b * US_PER_DAY) for a, b, _ in p.days] == [
        (us("2026-03-02T00:00:00+00:00"), us("2026-03-05T00:00:00+00:00"))
    ]
    assert plan(5, 5, None, BERLIN).pieces == []


ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "UTC"]


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(to_us(datetime(2025, 1, 1, tzinfo=UTC)), to_us(datetime(2027, 1, 1, tzinfo=UTC))),
    length=st.integers(1, 70 * US_PER_DAY),
    zone=st.sampled_from(ZONES),
    unit=st.sampled_from([None, "hour", "day", "week", "month"]),
)
def test_plan_covers_the_range_exactly_once(start: int, length: int, zone: str, unit: str | None) -> None:
    tz = ZoneInfo(zone)
    if unit == "hour":
        length = min(length, 5 * US_PER_DAY)
    end = start + length
    p = plan(start, end, unit, tz)
    parts = (
        [(a * US_PER_HOUR, b * US_PER_HOUR, i) for a, b, i in p.hours]
        + [(a * US_PER_DAY, b * US_PER_DAY, i) for a, b, i in p.days]
        + list(p.raw)
    )
    parts.sort()
    assert parts[0][0] == start and parts[-1][1] == end
    for (_, b1, _), (a2, _, _) in pairwise(parts):
        assert b1 == a2  # no gap, no overlap
    for a, b, i in parts:
        pa, pb, key = p.pieces[i]
        assert pa <= a < b <= pb
        if unit:  # every instant of a part is in its piece's bucket
            assert bucket_key(a, unit, tz) == key and bucket_key(b - 1, unit, tz) == key
