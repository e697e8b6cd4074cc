"""Utilization, the floor: paid-up budgets and quotas that go unused are money lost too.

Pure functions over data and an explicit `now`: a `Cycle` is one backend's current period
(a `committed: true` budget, or a quota window from the newest reading), with the share used
and the share of time elapsed. `findings` says what to alert on; `recommend` where to send work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

from ..events import parse_timestamp
from .config import UtilizationConfig
from .status import BudgetStatus

#: below this elapsed share, a projection is noise: the cycle just started
MIN_ELAPSED_FOR_PROJECTION = 0.25


class CycleDict(TypedDict):
    """A cycle as `llmbudget budget --utilization --json` and `GET /api/budgets` show it."""

    name: str
    source: str
    used: float
    elapsed: float
    pace: float | None
    projected: float | None
    remaining: float
    start: str | None
    reset: str | None


@dataclass(frozen=True, slots=True)
class Cycle:
    """One backend's current cycle: share used (0..1+) and share of the cycle elapsed (0..1)."""

    name: str
    #: budget | quota
    source: str
    used: float
    elapsed: float
    start: datetime | None
    end: datetime | None

    @property
    def remaining(self) -> float:
        return max(0.0, 1.0 - self.used)

    @property
    def pace(self) -> float | None:
        """Used share per elapsed share: 1.0 uses exactly the whole cycle, below 1 leaves some unused."""
        return self.used / self.elapsed if self.elapsed > 0 else None

    @property
    def projected(self) -> float | None:
        """Projected use at the end of the cycle at the current pace (capped at 100%: use stops at the limit)."""
        p = self.pace
        return None if p is None else min(1.0, p)

    def to_dict(self) -> CycleDict:
        return {
            "name": self.name,
            "source": self.source,
            "used": round(self.used, 4),
            "elapsed": round(self.elapsed, 4),
            "pace": None if self.pace is None else round(self.pace, 4),
            "projected": None if self.projected is None else round(self.projected, 4),
            "remaining": round(self.remaining, 4),
            "start": self.start.isoformat() if self.start else None,
            "reset": self.end.isoformat() if self.end else None,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """Something to alert on, once per cycle (`key` de-duplicates)."""

    kind: str
    cycle: str | None
    message: str
    key: str


def cycle_from_status(status: BudgetStatus, now: datetime) -> Cycle | None:
    """A committed budget's cycle (`BudgetStatus` of a calendar or rolling window)."""
    w = status.window
    b = status.budget
    if w is None or w.start is None or w.end is None or b.limit <= 0:
        return None
    total = (w.end - w.start).total_seconds()
    elapsed = min(1.0, max(0.0, (now - w.start).total_seconds() / total)) if total > 0 else 0.0
    label = b.name if b.scope == "global" else f"{b.name} ({status.value})"
    return Cycle(label, "budget", status.spent / b.limit, elapsed, w.start, w.end)


_DURATION = re.compile(r"^(\d+)\s*([hd])$")


def window_length(name: str) -> timedelta | None:
    """`5h` -> 5 hours, `7d` -> 7 days; other window names have no known length."""
    m = _DURATION.match(name.strip().lower())
    if not m:
        return {"weekly": timedelta(days=7), "daily": timedelta(days=1)}.get(name.strip().lower())
    n = int(m.group(1))
    return timedelta(hours=n) if m.group(2) == "h" else timedelta(days=n)


def cycles_from_readings(
    latest: dict[str, dict[str, Any]],
    now: datetime,
    *,
    windows: tuple[str, ...] = ("7d",),
    max_age: timedelta = timedelta(days=2),
) -> list[Cycle]:
    """Quota cycles from the newest reading per account: each window with a utilization and a reset."""
    out: list[Cycle] = []
    for account, reading in sorted(latest.items()):
        try:
            raw_ts = reading.get("timestamp")
            ts = parse_timestamp(raw_ts) if raw_ts else None
        except ValueError:
            continue
        if ts is not None and now - ts > max_age:
            continue  # stale: say nothing rather than something wrong
        for wname, w in (reading.get("windows") or {}).items():
            if windows and wname not in windows:
                continue
            length = window_length(wname)
            util, reset = w.get("utilization"), w.get("reset")
            if length is None or util is None or reset is None:
                continue
            try:
                end = parse_timestamp(reset)
            except ValueError:
                continue
            start = end - length
            elapsed = min(1.0, max(0.0, (now - start) / length))
            out.append(Cycle(f"{account} {wname}", "quota", float(util), elapsed, start, end))
    return out


def findings(cycles: list[Cycle], cfg: UtilizationConfig) -> list[Finding]:
    """Under-use at mid-cycle, near exhaustion, and a too-conservative projected total."""
    out: list[Finding] = []
    if not cfg.enabled:
        return out
    for c in cycles:
        end = c.end.isoformat() if c.end else "-"
        if c.elapsed >= cfg.midcycle and c.used < cfg.min_used:
            out.append(
                Finding(
                    "utilization_low",
                    c.name,
                    f"{c.name} has used {c.used:.0%} with {c.elapsed:.0%} of its cycle gone: "
                    "route more work there.",
                    f"util|low|{c.name}|{end}",
                )
            )
        if c.remaining <= cfg.near_exhausted_remaining:
            others = [
                o.name
                for o in sorted(cycles, key=lambda o: -_headroom(o))
                if o is not c and o.remaining > cfg.near_exhausted_remaining
            ]
            to = f" to {others[0]}" if others else ""
            out.append(
                Finding(
                    "utilization_exhausted",
                    c.name,
                    f"{c.name} has {c.remaining:.0%} left until its reset: shift load{to}.",
                    f"util|exhausted|{c.name}|{end}",
                )
            )
    projected = [
        c.projected for c in cycles if c.projected is not None and c.elapsed >= MIN_ELAPSED_FOR_PROJECTION
    ]
    if projected:
        total = sum(projected) / len(projected)
        if total < cfg.min_projected_total:
            ends = sorted(c.end.isoformat() for c in cycles if c.end)
            out.append(
                Finding(
                    "utilization_conservative",
                    None,
                    f"Projected use across backends is {total:.0%} at cycle end (floor "
                    f"{cfg.min_projected_total:.0%}): limits or routing are too conservative.",
                    f"util|conservative|{ends[-1] if ends else '-'}",
                )
            )
    return out


def _headroom(c: Cycle) -> float:
    """Unused share per share of time left: high means the backend can take more work now."""
    left = max(1.0 - c.elapsed, 0.01)
    return c.remaining / left


def recommend(cycles: list[Cycle]) -> str | None:
    """`→ use X | avoid Y`: the most headroom per time left, and the least."""
    if not cycles:
        return None
    ranked = sorted(cycles, key=_headroom, reverse=True)
    best, worst = ranked[0], ranked[-1]
    if len(ranked) == 1 or best is worst:
        return f"→ use {best.name}" if best.remaining > 0 else f"→ avoid {best.name}"
    return f"→ use {best.name} | avoid {worst.name}"
