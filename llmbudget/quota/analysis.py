"""Quota analysis over stored readings: pure functions of a list of `QuotaReading` and an injected `now`.

- `burn_rates`: how fast each account's 7d (and 5h) utilization grows, and when it runs out at that rate.
- `weekly`: peak and average 7d utilization per account per ISO week, with exhaustion events.
- `stagger`: windows resetting in the next 48 hours, soonest first.
- `underspend`: "use it or lose it", a 5h window mostly unused that resets soon.
- `rotation`: accounts ranked by headroom (the ranking itself lives in `quota.rotation`).
- `prune_readings`: archive to gzip JSONL and delete readings past the retention period.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .readings import QuotaReading
from .rotation import rank_accounts

#: windows whose growth is tracked, most important first
BURN_WINDOWS = ("7d", "5h")
DEFAULT_RETENTION_DAYS = 30
STAGGER_HORIZON = timedelta(hours=48)
#: underspend: at least this share of the 5h window unused ...
UNDERSPEND_UNUSED = 0.40
#: ... with less than this left before it resets
UNDERSPEND_WITHIN = timedelta(hours=2)
#: an account counts as active when its newest reading is this recent
ACTIVE_WITHIN = timedelta(hours=6)
#: two resets closer than this are the same reset (providers round differently from call to call)
_RESET_TOLERANCE = timedelta(minutes=2)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _pct(f: float | None) -> float | None:
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


def _utilization(r: QuotaReading, window: str) -> float | None:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "window": self.window,
            "readings": self.readings,
            "since": _iso(self.since),
            "last": _iso(self.last),
            "utilization_pct": _pct(self.utilization),
            "change_pct": _pct(self.change),
            "per_hour_pct": None if self.per_hour is None else round(self.per_hour * 100, 3),
            "reset": _iso(self.reset),
            "exhaustion": _iso(self.exhaustion),
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
            points = [r for r in rs if _utilization(r, window) is not None]
            if not points:
                continue
            cycle = _same_cycle(points, window)
            first, last = cycle[0], cycle[-1]
            u0, u1 = _utilization(first, window), _utilization(last, window)
            assert u0 is not None and u1 is not None
            reset = last.windows[window].reset
            if reset is not None and reset <= now:
                continue  # the cycle these readings describe is over: nothing left to project
            t0 = first.timestamp
            slope = _slope_per_hour(
                [((r.timestamp - t0).total_seconds() / 3600, _utilization(r, window) or 0.0) for r in cycle]
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


# ---------------------------------------------------------------------------- weekly
@dataclass(slots=True)
class ExhaustionEvent:
    """A run of consecutive exhausted readings (≥ 100% of a window, or rejected)."""

    backend: str
    start: datetime
    last_seen: datetime
    readings: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "start": _iso(self.start),
            "last_seen": _iso(self.last_seen),
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "week": self.week,
            "readings": self.readings,
            "peak_7d_pct": _pct(self.peak),
            "average_7d_pct": _pct(self.average),
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
        u = _utilization(r, "7d")
        if u is not None:
            values[key].append(u)
    for key, vs in values.items():
        rows[key].peak = max(vs)
        rows[key].average = sum(vs) / len(vs)
    for ev in exhaustion_events(rs):
        rows[(ev.backend, iso_week(ev.start))].exhaustions.append(ev)
    # an account without a 7d window (an API key, credit) has nothing to show here unless it was exhausted
    return [rows[k] for k in sorted(rows) if rows[k].peak is not None or rows[k].exhaustions]


# ---------------------------------------------------------------------------- stagger
@dataclass(slots=True)
class ResetRow:
    backend: str
    window: str
    reset: datetime
    in_seconds: float
    utilization: float | None
    observed: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "window": self.window,
            "reset": _iso(self.reset),
            "in_hours": round(self.in_seconds / 3600, 2),
            "utilization_pct": _pct(self.utilization),
            "observed": _iso(self.observed),
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "utilization_pct": _pct(self.utilization),
            "unused_pct": _pct(self.unused),
            "reset": _iso(self.reset),
            "minutes_to_reset": round((self.reset - self.now).total_seconds() / 60),
            "observed": _iso(self.observed),
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
) -> list[dict[str, Any]]:
    """Accounts ranked by headroom, maxed/rejected/invalid-key last (`quota.rotation.rank_accounts`).

    `accounts` names configured accounts; one without any reading is ranked UNKNOWN.
    """
    newest: dict[str, QuotaReading | None] = {name: None for name in accounts}
    newest.update(latest(readings))
    ranked = rank_accounts(newest, now) if warn_at is None else rank_accounts(newest, now, warn_at=warn_at)
    return [r.to_dict() for r in ranked]


# ---------------------------------------------------------------------------- prune
@dataclass(slots=True)
class PruneResult:
    before: datetime
    dry_run: bool
    ledger_readings: int = 0
    log_files: list[str] = field(default_factory=list)
    log_readings: int = 0
    archives: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": _iso(self.before),
            "dry_run": self.dry_run,
            "ledger_readings": self.ledger_readings,
            "log_files": list(self.log_files),
            "log_readings": self.log_readings,
            "archives": list(self.archives),
        }


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def prune_readings(
    ledger: Any, *, before: datetime, log_dir: Path, archive_dir: Path, now: datetime, dry_run: bool = False
) -> PruneResult:
    """Archive readings older than `before` to gzip JSONL under `archive_dir`, then delete them.

    Both places readings live are pruned: the ledger (one archive per run) and the daily
    JSONL log (a file whose whole day lies before `before` is moved into
    `archive_dir/readings-YYYY-MM-DD.jsonl.gz`). With `dry_run` nothing is written or deleted.
    """
    res = PruneResult(before=before, dry_run=dry_run)
    old_days: list[Path] = []
    if log_dir.is_dir():
        for p in sorted(log_dir.glob("readings-*.jsonl")):
            end = _day_end(p)
            if end is not None and end <= before:  # the whole day lies before the cut-off
                old_days.append(p)
    if ledger is not None:
        if dry_run:
            res.ledger_readings = ledger.prune_readings(before, dry_run=True)
        else:
            rows = ledger.readings(until=before, limit=None)
            if rows:
                archive_dir.mkdir(parents=True, exist_ok=True)
                stem = f"ledger-readings-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
                path = archive_dir / f"{stem}.jsonl.gz"
                n = 1
                while path.exists():  # never overwrite an earlier archive
                    n += 1
                    path = archive_dir / f"{stem}-{n}.jsonl.gz"
                _write_gzip_lines(
                    path, (json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in rows)
                )
                res.archives.append(str(path))
            res.ledger_readings = ledger.prune_readings(before)
    for p in old_days:
        res.log_files.append(str(p))
        res.log_readings += _count_lines(p)
        if dry_run:
            continue
        archive_dir.mkdir(parents=True, exist_ok=True)
        dest = archive_dir / (p.name + ".gz")
        # append as another gzip member if an earlier run archived the same day (gzip reads both)
        with p.open("rb") as src, gzip.open(dest, "ab") as out:
            for chunk in iter(lambda: src.read(1 << 16), b""):
                out.write(chunk)
        os.unlink(p)
        res.archives.append(str(dest))
    return res


def _day_end(path: Path) -> datetime | None:
    """The end (exclusive) of the UTC day a `readings-YYYY-MM-DD.jsonl` file holds."""
    try:
        day = datetime.strptime(path.stem.removeprefix("readings-"), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return day + timedelta(days=1)


def _write_gzip_lines(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line)
    os.replace(tmp, path)  # the archive is complete before anything is deleted
