"""--since/--until parsing and calendar windows: midnight, month and DST boundaries, with a fixed now."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbudget.config import Config
from llmbudget.errors import ValidationError
from llmbudget.timeranges import (
    day_window,
    local_midnight,
    month_window,
    parse_period,
    parse_range,
    parse_since,
    parse_until,
    this_month_window,
    today_window,
    week_window,
)

BERLIN = ZoneInfo("Europe/Berlin")
NY = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_zone_comes_from_config() -> None:
    cfg = Config(timezone="Europe/Berlin")
    # 2025-01-15 23:30 UTC is already 16 January in Berlin
    since = parse_since("today", zone=cfg.zone(), now=utc(2025, 1, 15, 23, 30))
    assert since == utc(2025, 1, 15, 23, 0)


def test_midnight_boundary_in_zone() -> None:
    # one minute before and one minute after local midnight in Berlin (UTC+1 in winter)
    before = utc(2025, 1, 15, 22, 59)
    after = utc(2025, 1, 15, 23, 1)
    assert today_window(BERLIN, before) == (utc(2025, 1, 14, 23), utc(2025, 1, 15, 23))
    assert today_window(BERLIN, after) == (utc(2025, 1, 15, 23), utc(2025, 1, 16, 23))
    assert parse_period("yesterday", zone=BERLIN, now=after) == (utc(2025, 1, 14, 23), utc(2025, 1, 15, 23))


def test_month_boundary_in_zone() -> None:
    # 31 Jan 23:30 UTC is 1 Feb 00:30 in Berlin: "this month" is February there, January in UTC
    now = utc(2025, 1, 31, 23, 30)
    assert this_month_window(BERLIN, now) == (utc(2025, 1, 31, 23), utc(2025, 2, 28, 23))
    assert this_month_window(ZoneInfo("UTC"), now) == (utc(2025, 1, 1), utc(2025, 2, 1))
    assert parse_period("last month", zone=BERLIN, now=now) == (utc(2024, 12, 31, 23), utc(2025, 1, 31, 23))
    # year boundary, both directions
    assert month_window(ZoneInfo("UTC"), utc(2025, 1, 5), -1) == (utc(2024, 12, 1), utc(2025, 1, 1))
    assert month_window(ZoneInfo("UTC"), utc(2024, 12, 5), 1) == (utc(2025, 1, 1), utc(2025, 2, 1))
    assert month_window(ZoneInfo("UTC"), utc(2025, 3, 31), -13) == (utc(2024, 2, 1), utc(2024, 3, 1))


@pytest.mark.parametrize(
    "zone, day, hours",
    [
        (BERLIN, date(2025, 3, 30), 23),  # spring forward
        (BERLIN, date(2025, 10, 26), 25),  # fall back
        (NY, date(2025, 3, 9), 23),
        (NY, date(2025, 11, 2), 25),
        (BERLIN, date(2025, 6, 1), 24),
    ],
)
def test_dst_days_have_23_or_25_hours(zone: ZoneInfo, day: date, hours: int) -> None:
    noon = datetime.combine(day, datetime.min.time(), tzinfo=zone).replace(hour=12).astimezone(UTC)
    start, end = today_window(zone, noon)
    assert end - start == timedelta(hours=hours)
    assert start.astimezone(zone).date() == day and start.astimezone(zone).hour == 0
    # a date given to --until means through the end of that (short or long) day
    assert parse_until(day.isoformat(), zone=zone, now=noon) == end
    assert parse_since(day.isoformat(), zone=zone, now=noon) == start


def test_dst_month_is_not_a_whole_number_of_days() -> None:
    start, end = month_window(BERLIN, utc(2025, 3, 15))
    assert end - start == timedelta(days=31, hours=-1)
    start, end = month_window(BERLIN, utc(2025, 10, 15))
    assert end - start == timedelta(days=31, hours=1)


def test_durations_are_absolute() -> None:
    now = utc(2025, 3, 31, 12)  # the day after Berlin's spring-forward
    assert parse_since("7d", zone=BERLIN, now=now) == now - timedelta(hours=168)
    assert parse_since("24h", zone=BERLIN, now=now) == utc(2025, 3, 30, 12)
    assert parse_since("2w", zone=BERLIN, now=now) == now - timedelta(days=14)
    assert parse_since("30m", zone=BERLIN, now=now) == utc(2025, 3, 31, 11, 30)
    assert parse_since("3 days", zone=BERLIN, now=now) == utc(2025, 3, 28, 12)
    assert parse_until("1d", zone=BERLIN, now=now) == utc(2025, 3, 30, 12)
    assert parse_since("now", zone=BERLIN, now=now) == now


def test_weeks_start_on_monday_in_zone() -> None:
    # Sunday 2025-03-30 22:30 UTC is Monday 31 March 00:30 in Berlin (CEST)
    now = utc(2025, 3, 30, 22, 30)
    assert week_window(BERLIN, now) == (utc(2025, 3, 30, 22), utc(2025, 4, 6, 22))
    # last week contains the spring-forward Sunday: 7 days minus an hour
    start, end = parse_period("last week", zone=BERLIN, now=now)
    assert (start, end) == (utc(2025, 3, 23, 23), utc(2025, 3, 30, 22))
    assert parse_period("this-week", zone=BERLIN, now=now) == week_window(BERLIN, now)
    assert parse_period("This_Week", zone=BERLIN, now=now) == week_window(BERLIN, now)


def test_named_periods_since_means_start_until_means_end() -> None:
    now = utc(2025, 5, 14, 10)
    since, until = parse_range("last week", "last week", zone=ZoneInfo("UTC"), now=now)
    assert (since, until) == (utc(2025, 5, 5), utc(2025, 5, 12))
    since, until = parse_range("this month", None, zone=ZoneInfo("UTC"), now=now)
    assert (since, until) == (utc(2025, 5, 1), None)
    assert parse_range(None, None, zone=BERLIN, now=now) == (None, None)


def test_dates_times_and_months() -> None:
    z = NY
    assert parse_since("2025-03", zone=z) == datetime(2025, 3, 1, tzinfo=z).astimezone(UTC)
    assert parse_until("2025-03", zone=z) == datetime(2025, 4, 1, tzinfo=z).astimezone(UTC)
    assert parse_until("2024-12", zone=ZoneInfo("UTC")) == utc(2025, 1, 1)
    # a naive time is local to the zone; an offset or Z wins over it
    assert parse_since("2025-03-09T09:00", zone=z) == utc(2025, 3, 9, 13)  # EDT, after the change
    assert parse_since("2025-03-08 09:00:30", zone=z) == utc(2025, 3, 8, 14, 0, 30)  # EST
    assert parse_since("2025-03-08T09:00Z", zone=z) == utc(2025, 3, 8, 9)
    assert parse_since("2025-03-08T09:00+02:00", zone=z) == utc(2025, 3, 8, 7)
    # an instant given to --until is that instant, not the end of its day
    assert parse_until("2025-03-08T09:00Z", zone=z) == utc(2025, 3, 8, 9)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "tomorrow-ish",
        "2025-13",
        "2025-02-30",
        "2025-02-03T25:00",
        "7x",
        "last year",
        "-7d",
        "7.5d",
    ],
)
def test_bad_input_names_the_option_and_the_forms(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_since(value, zone=BERLIN, now=utc(2025, 1, 1))
    assert info.value.field == "--since"
    assert "--since" in str(info.value)
    assert "7d" in str(info.value) or "too long" in str(info.value)


def test_bad_input_names_a_custom_option() -> None:
    with pytest.raises(ValidationError) as info:
        parse_until("soon", zone=BERLIN, now=utc(2025, 1, 1), option="until")
    assert info.value.field == "until"


def test_until_before_since_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        parse_range("2025-03-10", "2025-03-01", zone=BERLIN, now=utc(2025, 4, 1))
    assert info.value.field == "--until"


def test_huge_duration_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValidationError):
        parse_since("99999999999999d", zone=BERLIN, now=utc(2025, 1, 1))


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValidationError):
        day_window(BERLIN, datetime(2025, 1, 1))


@given(
    d=st.dates(min_value=date(1990, 1, 1), max_value=date(2090, 12, 31)),
    zone=st.sampled_from(
        [
            BERLIN,
            NY,
            ZoneInfo("Australia/Lord_Howe"),
            ZoneInfo("America/Sao_Paulo"),
            ZoneInfo("Asia/Kolkata"),
            ZoneInfo("UTC"),
        ]
    ),
)
def test_day_windows_tile_time(d: date, zone: ZoneInfo) -> None:
    start = local_midnight(d, zone)
    end = local_midnight(d + timedelta(days=1), zone)
    # consecutive days meet exactly and each lasts between 22 and 26 hours
    assert timedelta(hours=22) <= end - start <= timedelta(hours=26)
    mid = start + (end - start) / 2
    assert day_window(zone, mid) == (start, end)
    assert parse_until(d.isoformat(), zone=zone, now=mid) == end
