"""Quota analysis over stored readings: pure functions of a list of `QuotaReading` and an injected `now`.

- `burn_rates`: how fast each account's 7d (and 5h) utilization grows, and when it runs out at that rate.
- `stagger`: windows resetting in the next 48 hours, soonest first.
- `underspend`: "use it or lose it", a 5h window mostly unused that resets soon.
- `rotation`: accounts ranked by headroom (the ranking itself lives in `quota.rotation`).

Peak and average utilization per week are `quota/weekly.py`; archiving and deleting old readings
is `quota/prune.py` (the one part that writes files).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from .readings import QuotaReading
from .rotation import RankedDict, rank_accounts

#: windows whose growth is tracked, most important first
BURN_WINDOWS = ("7d", "5h")
STAGGER_HORIZON = timedelta(hours=48)
#: underspend: at least this share of the 5h window unused ...
UNDERSPEND_UNUSED = 0.40
#: ... with less than this left before it resets
UNDERSPEND_WITHIN = timedelta(hours=2)
#: an account counts as active when its newest reading is this recent
ACTIVE_WITHIN = timedelta(hours=6)
#: two resets closer than this are the same reset (providers round differently from call to call)
_RESET_TOLERANCE = timedelta(minutes=2)


class BurnRateDict(TypedDict):
    backend: str
    window: str
    readings: int
    since: str | None
    last: str | None
    utilization_pct: float | None
    change_pct: float | None
    per_hour_pct: float | None
    reset: str | None
    exhaustion: str | None
    exhausts_before_reset: bool | None


class ResetRowDict(TypedDict):
    backend: str
    window: str
    reset: str | None
    in_hours: float
    utilization_pct: float | None
    observed: str | None


class UnderspendDict(TypedDict):
    backend: str
    utilization_pct: float | None
    unused_pct: float | None
    reset: str | None
    minutes_to_reset: int
    observed: str | None
    message: str


def iso_utc(dt: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`; None stays None."""
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def pct(f: float | None) -> float | None:
    """A share as a percentage with two decimals; None stays None."""
    return None if f is None else round(f * 100, 2)


def by_account(readings: Iterable[QuotaReading]) -> dict[str, list[QuotaReading]]:
    """Readings grouped per account (backend), each list oldest first."""
    out: dict[str, list[QuotaReading]] = defaultdict(list)
    for r in readings:
        out[r.backend].append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.timestamp)
    return dict(sorted(out.items()))


def latest(readings: Iterable[QuotaReading]) -> dict[str, QuotaReading]:
    """The newest reading per account."""
    return {name: rs[-1] for name, rs in by_account(readings).items()}


def filter_provider(readings: Iterable[QuotaReading], name: str | None) -> list[QuotaReading]:
    """Readings of one account (by name) or of one provider kind; all when `name` is None."""
    rs = list(readings)
    if name is None:
        return rs
    return [r for r in rs if name in (r.backend, r.provider)]


def utilization(r: QuotaReading, window: str) -> float | None:
    """The reading's utilization of one window (0..1), None when it has none."""
    w = r.windows.get(window)
    return None if w is None else w.utilization


def is_exhausted(r: QuotaReading) -> bool:
    """A reading at or past 100% of any window, or rejected by the provider."""
    if r.status == "rejected":
        return True
    return any(w.utilization is not None and w.utilization >= 1.0 for w in r.windows.values())


# ---------------------------------------------------------------------------- burn rate
@dataclass(slots=True)
class BurnRate:
    """Growth of one window's utilization over its current cycle, and the exhaustion it points to."""

    backend: str
    window: str
    readings: int
    since: datetime
    last: datetime
    utilization: float
    change: float
    #: fraction of the window per hour (least-squares slope over the cycle's readings); None with one reading
    per_hour: float | None
    reset: datetime | None
    #: when utilization reaches 100% at this rate; None when it does not grow
    exhaustion: datetime | None
    #: True when the window runs out before it resets (the thing to act on)
    exhausts_before_reset: bool | None

    def to_dict(self) -> BurnRateDict:
        return {
            "backend": self.backend,
            "window": self.window,
            "readings": self.readings,
            "since": iso_utc(self.since),
            "last": iso_utc(self.last),
            "utilization_pct": pct(self.utilization),
            "change_pct": pct(self.change),
            "per_hour_pct": None if self.per_hour is None else round(self.per_hour * 100, 3),
            "reset": iso_utc(self.reset),
            "exhaustion": iso_utc(self.exhaustion),
            "exhausts_before_reset": self.exhausts_before_reset,
        }


def _same_cycle(points: list[QuotaReading], window: str) -> list[QuotaReading]:
    """The readings since the window last reset: same reset time, and no drop in utilization."""
    cycle = [points[-1]]
    reset = points[-1].windows[window].reset
    for r in reversed(points[:-1]):
        w = r.windows[window]
        if reset is not None and w.reset is not None and abs(w.reset - reset) > _RESET_TOLERANCE:
            break
        u, nxt = w.utilization, cycle[0].windows[window].utilization
        if u is not None and nxt is not None and u > nxt + 1e-9:  # a drop means a reset in between
            break
        cycle.insert(0, r)
    return cycle


def _slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (hours, utilization) points; None when time does not vary."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def burn_rates(
    readings: Iterable[QuotaReading], *, now: datetime, windows: Sequence[str] = BURN_WINDOWS
) -> list[BurnRate]:
    """Per account and window: utilization growth over the current cycle and projected exhaustion."""
    out: list[BurnRate] = []
    for name, rs in by_account(readings).items():
        for window in windows:
            points = [r for r in rs if utilization(r, window) is not None]
            if not points:
                continue
            cycle = _same_cycle(points, window)
            first, last = cycle[0], cycle[-1]
            u0, u1 = utilization(first, window), utilization(last, window)
            assert u0 is not None and u1 is not None
            reset = last.windows[window].reset
            if reset is not None and reset <= now:
                continue  # the cycle these readings describe is over: nothing left to project
            t0 = first.timestamp
            slope = _slope_per_hour(
                [((r.timestamp - t0).total_seconds() / 3600, utilization(r, window) or 0.0) for r in cycle]
            )
            exhaustion: datetime | None = None
            before: bool | None = None
            if u1 >= 1.0:
                exhaustion = last.timestamp
            elif slope is not None and slope > 0:
                # extrapolate from the latest point, not the regression line: the latest value is measured
                exhaustion = last.timestamp + timedelta(hours=(1.0 - u1) / slope)
            if exhaustion is not None:
                before = reset is None or exhaustion < reset
            elif slope is not None:
                before = False
            out.append(
                BurnRate(
                    backend=name,
                    window=window,
                    readings=len(cycle),
                    since=t0,
                    last=last.timestamp,
                    utilization=u1,
                    change=u1 - u0,
                    per_hour=slope,
                    reset=reset,
                    exhaustion=exhaustion,
                    exhausts_before_reset=before,
                )
            )
    return out


# ---------------------------------------------------------------------------- stagger
@dataclass(slots=True)
class ResetRow:
    backend: str
    window: str
    reset: datetime
    in_seconds: float
    utilization: float | None
    observed: datetime

    def to_dict(self) -> ResetRowDict:
        return {
            "backend": self.backend,
            "window": self.window,
            "reset": iso_utc(self.reset),
            "in_hours": round(self.in_seconds / 3600, 2),
            "utilization_pct": pct(self.utilization),
            "observed": iso_utc(self.observed),
        }


def stagger(
    readings: Iterable[QuotaReading], *, now: datetime, horizon: timedelta = STAGGER_HORIZON
) -> list[ResetRow]:
    """Windows of each account's newest reading that reset within `horizon` from now, soonest first."""
    out: list[ResetRow] = []
    for name, r in latest(readings).items():
        for window, w in r.windows.items():
            if w.reset is not None and now < w.reset <= now + horizon:
                out.append(
                    ResetRow(
                        name, window, w.reset, (w.reset - now).total_seconds(), w.utilization, r.timestamp
                    )
                )
    out.sort(key=lambda x: (x.reset, x.backend, x.window))
    return out


# ---------------------------------------------------------------------------- underspend
@dataclass(slots=True)
class Underspend:
    backend: str
    utilization: float
    reset: datetime
    observed: datetime
    now: datetime

    @property
    def unused(self) -> float:
        return max(0.0, 1.0 - self.utilization)

    @property
    def message(self) -> str:
        mins = max(0, round((self.reset - self.now).total_seconds() / 60))
        return (
            f"use it or lose it: {round(self.unused * 100)}% of {self.backend}'s 5h window unused, "
            f"resets in {mins // 60}h{mins % 60:02d}m"
        )

    def to_dict(self) -> UnderspendDict:
        return {
            "backend": self.backend,
            "utilization_pct": pct(self.utilization),
            "unused_pct": pct(self.unused),
            "reset": iso_utc(self.reset),
            "minutes_to_reset": round((self.reset - self.now).total_seconds() / 60),
            "observed": iso_utc(self.observed),
            "message": self.message,
        }


def underspend(
    readings: Iterable[QuotaReading],
    *,
    now: datetime,
    unused: float = UNDERSPEND_UNUSED,
    within: timedelta = UNDERSPEND_WITHIN,
    active_within: timedelta = ACTIVE_WITHIN,
) -> list[Underspend]:
    """Active accounts with at least `unused` of the 5h window left and less than `within` until it resets."""
    out: list[Underspend] = []
    for name, r in latest(readings).items():
        if now - r.timestamp > active_within or r.key_valid is False or r.status == "rejected":
            continue
        w = r.windows.get("5h")
        if w is None or w.utilization is None or w.reset is None:
            continue
        # a reading taken before the window's reset says nothing about the new window
        if not (now < w.reset <= now + within):
            continue
        if 1.0 - w.utilization >= unused - 1e-9:
            out.append(Underspend(name, w.utilization, w.reset, r.timestamp, now))
    out.sort(key=lambda u: u.reset)
    return out


# ---------------------------------------------------------------------------- rotation
def rotation(
    readings: Iterable[QuotaReading],
    *,
    now: datetime,
    accounts: Iterable[str] = (),
    warn_at: float | None = None,
) -> list[RankedDict]:
    """Accounts ranked by headroom, maxed/rejected/invalid-key last (`quota.rotation.rank_accounts`).

    `accounts` names configured accounts; one without any reading is ranked UNKNOWN.
    """
    newest: dict[str, QuotaReading | None] = {name: None for name in accounts}
    newest.update(latest(readings))
    ranked = rank_accounts(newest, now) if warn_at is None else rank_accounts(newest, now, warn_at=warn_at)
    return [r.to_dict() for r in ranked]
