"""Month-end forecast and budget run-out dates at the current burn rate (pure: no I/O, no clock).

Burn rate of a budget: what it spent in its current window divided by the time the window has
run (at least one hour, so a window a few minutes old does not extrapolate one call into a
fortune). Month-end projection: spend so far this month plus the trailing rate (the last seven
days' spend per second, or since the first event when the ledger is younger) times the time left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

#: the shortest elapsed time a rate is computed over
MIN_ELAPSED = timedelta(hours=1)


def burn_rate(spent: int, elapsed: timedelta) -> float:
    """Units (nano-USD or tokens) per second over `elapsed` (floored at MIN_ELAPSED)."""
    seconds = max(elapsed, MIN_ELAPSED).total_seconds()
    return max(0, spent) / seconds


def project(spent: int, rate: float, now: datetime, end: datetime) -> int:
    """Spend at `end` if `rate` holds from `now` on."""
    left = max(0.0, (end - now).total_seconds())
    return int(spent + rate * left)


class RunOutDict(TypedDict):
    """A budget's forecast as the dashboard's budgets page shows it."""

    runs_out_at: str | None
    exhausted: bool
    holds_until_reset: bool
    rate_per_hour: float
    projected_at_reset: int | None


@dataclass(frozen=True, slots=True)
class RunOut:
    """When a budget runs out at its burn rate."""

    #: the moment spend reaches the limit (None: not before the window resets, or no spend)
    at: datetime | None
    #: already at or over its limit
    exhausted: bool
    #: the window resets before the limit is reached at this rate
    holds: bool
    rate_per_s: float
    projected_at_reset: int | None

    def to_dict(self) -> RunOutDict:
        return {
            "runs_out_at": None if self.at is None else self.at.isoformat(),
            "exhausted": self.exhausted,
            "holds_until_reset": self.holds,
            "rate_per_hour": round(self.rate_per_s * 3600, 3),
            "projected_at_reset": self.projected_at_reset,
        }


def run_out(
    limit: int, spent: int, *, now: datetime, window_start: datetime | None, reset: datetime | None
) -> RunOut:
    """The date a budget of `limit` with `spent` so far runs out, at the rate of its current window."""
    if limit > 0 and spent >= limit:
        return RunOut(now, True, False, 0.0, spent)
    if window_start is None:
        return RunOut(None, False, reset is not None, 0.0, None)
    rate = burn_rate(spent, now - window_start)
    projected = None if reset is None else project(spent, rate, now, reset)
    if rate <= 0:
        return RunOut(None, False, True, 0.0, projected)
    at = now + timedelta(seconds=(limit - spent) / rate)
    if reset is not None and at >= reset:
        return RunOut(None, False, True, rate, projected)
    return RunOut(at, False, False, rate, projected)


def month_bounds(now_local: datetime) -> tuple[datetime, datetime]:
    """Start of this month and of the next, in `now_local`'s own time zone."""
    start = now_local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (start + timedelta(days=32)).replace(day=1)
    return start, nxt


def month_end_projection(
    month_spent: int, trailing_spent: int, trailing: timedelta, *, now: datetime, month_end: datetime
) -> int:
    """Projected spend at `month_end`: this month's spend plus the trailing rate times the time left."""
    return project(month_spent, burn_rate(trailing_spent, trailing), now, month_end)
