"""Budget windows: calendar day/week/month in a timezone (DST-correct), rolling hours, sessions.

A window has a stable `key` (the counter it writes to) and, for rolling windows, the keys of
every bucket it sums. Pure functions over an explicit `now`, so tests use a fixed clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Window:
    """The window a call falls in: counter key(s), start and end (None for sessions)."""

    period: str
    #: the counter this call's spend is added to
    key: str
    #: every counter summed to check the limit (rolling windows: several hour buckets)
    read_keys: tuple[str, ...]
    start: datetime | None
    end: datetime | None

    @property
    def reset(self) -> datetime | None:
        """When this window's spend stops counting (calendar: the next window's start)."""
        return self.end


def rolling_bucket_seconds(hours: int) -> int:
    """Bucket size for a rolling window: one hour, coarser for long windows (at most ~25 buckets)."""
    return 3600 * max(1, math.ceil(hours / 24))


def window_for(period: str, now: datetime, tz: ZoneInfo, *, session: str | None = None) -> Window | None:
    """The window of `period` containing `now`; None for `session` when the call names no session."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if period == "session":
        if not session:
            return None
        key = f"session:{session}"
        return Window(period, key, (key,), None, None)
    if period in ("day", "week", "month"):
        known = _calendar.get((period, tz))
        if (
            known is not None
            and known.start is not None
            and known.end is not None
            and known.start <= now < known.end
        ):
            return known  # the usual call: the window of the one before it
        window = _calendar_window(period, now, tz)
        _calendar[(period, tz)] = window
        return window
    if period.endswith("h") and period[:-1].isdigit():
        hours = int(period[:-1])
        size = rolling_bucket_seconds(hours)
        ts = int(now.timestamp())
        current = ts - ts % size
        # Buckets covering [now - hours, now]: counting whole buckets over-counts (never under-counts)
        # by at most one bucket, so a hard limit holds over every true rolling window.
        oldest = (ts - hours * 3600) - (ts - hours * 3600) % size
        seen = _rolling.get(period)
        if seen is not None and seen[0] == (oldest, current):
            return seen[1]
        starts = list(range(oldest, current + 1, size))
        keys = tuple(f"{period}:{s}" for s in starts)
        start = datetime.fromtimestamp(oldest, UTC)
        # the oldest bucket stops counting once `hours` have passed since its end
        end = datetime.fromtimestamp(oldest + size + hours * 3600, UTC)
        window = Window(period, keys[-1], keys, start, end)
        _rolling[period] = ((oldest, current), window)
        return window
    raise ValueError(f"unknown period {period!r}")


#: the calendar window each (period, zone) was last asked for, and the rolling one per period with
#: the bucket it was computed in: every call of a day asks for the same window (windows are frozen)
_calendar: dict[tuple[str, ZoneInfo], Window] = {}
_rolling: dict[str, tuple[tuple[int, int], Window]] = {}


def _calendar_window(period: str, now: datetime, tz: ZoneInfo) -> Window:
    local = now.astimezone(tz)
    if period == "day":
        start = datetime(local.year, local.month, local.day, tzinfo=tz)
        nxt = start.date() + timedelta(days=1)
        key = f"day:{start.date().isoformat()}"
    elif period == "week":  # ISO weeks start on Monday
        first = local.date() - timedelta(days=local.weekday())
        start = datetime(first.year, first.month, first.day, tzinfo=tz)
        nxt = first + timedelta(days=7)
        iso = first.isocalendar()
        key = f"week:{iso.year}-W{iso.week:02d}"
    else:
        start = datetime(local.year, local.month, 1, tzinfo=tz)
        nxt = (start.date().replace(day=28) + timedelta(days=4)).replace(day=1)
        key = f"month:{start.year}-{start.month:02d}"
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    return Window(period, key, (key,), start.astimezone(UTC), end.astimezone(UTC))


def format_reset(reset: datetime | None, tz: ZoneInfo) -> str:
    """The reset moment for notices, in the budget's timezone: `2025-06-02 00:00 CEST`."""
    if reset is None:
        return "the session ends"
    local = reset.astimezone(tz)
    return local.strftime("%Y-%m-%d %H:%M %Z").strip()


def cycle_fraction(window: Window, now: datetime) -> float | None:
    """Elapsed share of a calendar window (0..1), None for sessions."""
    if window.start is None or window.end is None:
        return None
    total = (window.end - window.start).total_seconds()
    return min(1.0, max(0.0, (now - window.start).total_seconds() / total)) if total > 0 else None


__all__ = ["Window", "cycle_fraction", "format_reset", "rolling_bucket_seconds", "window_for"]
