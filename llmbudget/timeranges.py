"""`--since` / `--until` parsing and calendar windows in the configured timezone.

Accepted forms (case-insensitive; `-` and `_` may stand for spaces):

- a date `2025-03-30`, a month `2025-03`, a date and time `2025-03-30T09:00` or
  `2025-03-30 09:00[:ss]` (local to the zone unless it carries an offset or `Z`);
- a duration back from now: `30m`, `24h`, `7d`, `2w` (absolute: `7d` is 7 × 24 hours);
- `now`, `today`, `yesterday`, `this week`, `last week`, `this month`, `last month`
  (weeks start on Monday, ISO 8601).

A period given to `--since` means its start and given to `--until` its end: `--until
2025-03-30` runs through the end of that day, and `--since "last week" --until "last week"`
is exactly last week. Every result is an aware UTC datetime, the form the ledger takes;
ranges are half-open, [since, until).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from .errors import ValidationError

ACCEPTED = (
    "a date (2025-03-30), a month (2025-03), a date and time (2025-03-30T09:00), "
    "a duration back from now (30m, 24h, 7d, 2w), now, today, yesterday, this week, "
    "last week, this month or last month"
)

_DURATION = re.compile(r"^(\d+)\s*(m|min|mins|minutes?|h|hours?|d|days?|w|weeks?)$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: the instants a range may name: two days inside the calendar's ends, so that any time zone and
#: any day or week bucket around them can still be computed
EARLIEST = datetime(1, 1, 3, tzinfo=UTC)
LATEST = datetime(9999, 12, 29, tzinfo=UTC)
_OUTSIDE = (
    f"is outside the dates llmbudget can count with ({EARLIEST.date().isoformat()} to "
    f"{LATEST.date().isoformat()}, UTC)"
)


# ---------------------------------------------------------------------- calendar helpers


def local_midnight(day: date, zone: tzinfo) -> datetime:
    """The instant a calendar day starts in `zone`, as aware UTC (DST-safe)."""
    # A wall-clock time that does not exist (a midnight skipped by DST) resolves with the
    # pre-transition offset, which lands on the first real instant of the day.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _local_today(zone: tzinfo, now: datetime) -> date:
    return now.astimezone(zone).date()


def _month_start(d: date) -> date:
    return d.replace(day=1)


def _next_month(d: date) -> date:
    return date(d.year + 1, 1, 1) if d.month == 12 else date(d.year, d.month + 1, 1)


def _prev_month(d: date) -> date:
    return date(d.year - 1, 12, 1) if d.month == 1 else date(d.year, d.month - 1, 1)


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValidationError("now", "must be timezone-aware")
    return now.astimezone(UTC)


def day_window(zone: tzinfo, now: datetime | None = None, offset_days: int = 0) -> tuple[datetime, datetime]:
    """[start, end) of today in `zone` (or `offset_days` from it), as aware UTC. A DST day is 23 or 25 h."""
    d = _local_today(zone, _now(now)) + timedelta(days=offset_days)
    return local_midnight(d, zone), local_midnight(d + timedelta(days=1), zone)


def week_window(
    zone: tzinfo, now: datetime | None = None, offset_weeks: int = 0
) -> tuple[datetime, datetime]:
    """[start, end) of the ISO week (Monday first) containing now in `zone`, shifted by `offset_weeks`."""
    today = _local_today(zone, _now(now))
    monday = today - timedelta(days=today.weekday()) + timedelta(weeks=offset_weeks)
    return local_midnight(monday, zone), local_midnight(monday + timedelta(days=7), zone)


def month_window(
    zone: tzinfo, now: datetime | None = None, offset_months: int = 0
) -> tuple[datetime, datetime]:
    """[start, end) of the calendar month containing now in `zone`, shifted by `offset_months`."""
    first = _month_start(_local_today(zone, _now(now)))
    for _ in range(abs(offset_months)):
        first = _next_month(first) if offset_months > 0 else _prev_month(first)
    return local_midnight(first, zone), local_midnight(_next_month(first), zone)


def today_window(zone: tzinfo, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of today in `zone`."""
    return day_window(zone, now)


def this_month_window(zone: tzinfo, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of this calendar month in `zone`."""
    return month_window(zone, now)


# ---------------------------------------------------------------------- parsing


def parse_period(
    value: str, *, zone: tzinfo, now: datetime | None = None, option: str = "--since"
) -> tuple[datetime, datetime]:
    """Parse one time expression into the [start, end) it covers (a bare instant: start == end).

    A period the calendar cannot hold (year 0 or 10000 after a time-zone shift, a day past
    9999-12-31) is a ValidationError naming `option`, like any other unreadable value.
    """
    try:
        start, end = _parse_period(value, zone=zone, now=now, option=option)
    except ValidationError:
        raise
    except (OverflowError, ValueError):
        raise ValidationError(option, f"{value!r} {_OUTSIDE}") from None
    if start < EARLIEST or end > LATEST:
        raise ValidationError(option, f"{value!r} {_OUTSIDE}")
    return start, end


def _parse_period(
    value: str, *, zone: tzinfo, now: datetime | None = None, option: str = "--since"
) -> tuple[datetime, datetime]:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(option, f"is empty; use {ACCEPTED}")
    ref = _now(now)
    text = re.sub(r"[\s_-]+", " ", value.strip().lower()) if not _looks_like_date(value) else value.strip()
    if text == "now":
        return ref, ref
    if text == "today":
        return day_window(zone, ref)
    if text == "yesterday":
        return day_window(zone, ref, -1)
    if text == "this week":
        return week_window(zone, ref)
    if text == "last week":
        return week_window(zone, ref, -1)
    if text == "this month":
        return month_window(zone, ref)
    if text == "last month":
        return month_window(zone, ref, -1)
    m = _DURATION.match(text)
    if m:
        n, unit = int(m.group(1)), m.group(2)[0]
        try:
            instant = ref - timedelta(seconds=n * _UNIT_SECONDS[unit])
        except OverflowError:
            raise ValidationError(option, f"duration {value!r} is too long") from None
        return instant, instant
    m = _MONTH.match(text)
    if m:
        year, month = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            raise ValidationError(option, f"no month {month} in {value!r}; use {ACCEPTED}")
        first = date(year, month, 1)
        return local_midnight(first, zone), local_midnight(_next_month(first), zone)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            d = date.fromisoformat(text)
        except ValueError:
            raise ValidationError(option, f"{value!r} is not a real date; use {ACCEPTED}") from None
        return local_midnight(d, zone), local_midnight(d + timedelta(days=1), zone)
    if re.match(r"\d{4}-\d{2}-\d{2}[T ]\d", text, re.IGNORECASE):
        s = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ValidationError(option, f"{value!r} is not a valid date and time; use {ACCEPTED}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=zone)
        instant = dt.astimezone(UTC)
        return instant, instant
    raise ValidationError(option, f"cannot read {value!r}; use {ACCEPTED}")


def _looks_like_date(value: str) -> bool:
    return bool(re.match(r"\s*\d{4}-\d{2}", value))


def parse_since(
    value: str, *, zone: tzinfo, now: datetime | None = None, option: str = "--since"
) -> datetime:
    """The start of the period `value` names, as aware UTC."""
    return parse_period(value, zone=zone, now=now, option=option)[0]


def parse_until(
    value: str, *, zone: tzinfo, now: datetime | None = None, option: str = "--until"
) -> datetime:
    """The (exclusive) end of the period `value` names: a date means through the end of that day."""
    return parse_period(value, zone=zone, now=now, option=option)[1]


def parse_range(
    since: str | None,
    until: str | None,
    *,
    zone: tzinfo,
    now: datetime | None = None,
    since_option: str = "--since",
    until_option: str = "--until",
) -> tuple[datetime | None, datetime | None]:
    """Parse both ends of a report's range; either may be None (open). Rejects an end before the start."""
    start = parse_since(since, zone=zone, now=now, option=since_option) if since is not None else None
    end = parse_until(until, zone=zone, now=now, option=until_option) if until is not None else None
    if start is not None and end is not None and end < start:
        raise ValidationError(until_option, f"{until!r} ends before {since_option} {since!r} starts")
    return start, end
