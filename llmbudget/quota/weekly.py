"""Quota analysis by week: peak and average 7d utilization per account per ISO week, and the
exhaustion episodes (≥ 100% of a window, or rejected) that began in it. Pure functions of a list
of `QuotaReading`, like the rest of `quota/analysis.py`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypedDict

from .analysis import by_account, is_exhausted, iso_utc, pct, utilization
from .readings import QuotaReading


class ExhaustionDict(TypedDict):
    backend: str
    start: str | None
    last_seen: str | None
    readings: int
    reason: str


class WeekRowDict(TypedDict):
    backend: str
    week: str
    readings: int
    peak_7d_pct: float | None
    average_7d_pct: float | None
    exhaustions: list[ExhaustionDict]


@dataclass(slots=True)
class ExhaustionEvent:
    """A run of consecutive exhausted readings (≥ 100% of a window, or rejected)."""

    backend: str
    start: datetime
    last_seen: datetime
    readings: int
    reason: str

    def to_dict(self) -> ExhaustionDict:
        return {
            "backend": self.backend,
            "start": iso_utc(self.start),
            "last_seen": iso_utc(self.last_seen),
            "readings": self.readings,
            "reason": self.reason,
        }


@dataclass(slots=True)
class WeekRow:
    backend: str
    #: ISO week, `2026-W47`
    week: str
    readings: int
    peak: float | None
    average: float | None
    exhaustions: list[ExhaustionEvent] = field(default_factory=list)

    def to_dict(self) -> WeekRowDict:
        return {
            "backend": self.backend,
            "week": self.week,
            "readings": self.readings,
            "peak_7d_pct": pct(self.peak),
            "average_7d_pct": pct(self.average),
            "exhaustions": [e.to_dict() for e in self.exhaustions],
        }


def iso_week(ts: datetime) -> str:
    """`YYYY-Www` of a UTC timestamp."""
    y, w, _ = ts.astimezone(UTC).isocalendar()
    return f"{y}-W{w:02d}"


def _exhaustion_reason(r: QuotaReading) -> str:
    parts = [
        f"{name} at {round((w.utilization or 0) * 100)}%"
        for name, w in sorted(r.windows.items())
        if w.utilization is not None and w.utilization >= 1.0
    ]
    if r.status == "rejected":
        parts.insert(0, "rejected")
    return ", ".join(parts)


def exhaustion_events(readings: Iterable[QuotaReading]) -> list[ExhaustionEvent]:
    """Exhaustion episodes per account: consecutive exhausted readings count once."""
    out: list[ExhaustionEvent] = []
    for name, rs in by_account(readings).items():
        current: ExhaustionEvent | None = None
        for r in rs:
            if is_exhausted(r):
                if current is None:
                    current = ExhaustionEvent(name, r.timestamp, r.timestamp, 0, _exhaustion_reason(r))
                    out.append(current)
                current.last_seen = r.timestamp
                current.readings += 1
            elif r.has_data:  # a reading with no data says nothing about recovery
                current = None
    return out


def weekly(readings: Iterable[QuotaReading]) -> list[WeekRow]:
    """Peak and average 7d utilization per account per ISO week, with the exhaustion events that began in it.

    Weeks of an account with neither a 7d figure nor an exhaustion event are left out."""
    rs = list(readings)
    rows: dict[tuple[str, str], WeekRow] = {}
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rs:
        key = (r.backend, iso_week(r.timestamp))
        row = rows.setdefault(
            key, WeekRow(backend=r.backend, week=key[1], readings=0, peak=None, average=None)
        )
        row.readings += 1
        u = utilization(r, "7d")
        if u is not None:
            values[key].append(u)
    for key, vs in values.items():
        rows[key].peak = max(vs)
        rows[key].average = sum(vs) / len(vs)
    for ev in exhaustion_events(rs):
        rows[(ev.backend, iso_week(ev.start))].exhaustions.append(ev)
    # an account without a 7d window (an API key, credit) has nothing to show here unless it was exhausted
    return [rows[k] for k in sorted(rows) if rows[k].peak is not None or rows[k].exhaustions]
