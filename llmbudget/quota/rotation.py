"""Which account to use next: usable accounts ranked by what their headroom is worth; CRITICAL ones last.

Shared by `llmbudget summary` and `llmbudget analyze --rotation`. The rule (README, "Which
account next"):

1. Groups, best first: usable (OK, then WARNING), UNKNOWN, maxed, out of credit, rejected,
   invalid key.
2. Among usable accounts, by what the headroom is made of:
   - `windows`: subscription windows (`5h`, `7d`, `7d_oi`, ...): quota already paid for and lost
     at its reset, so it goes first;
   - `metered`: prepaid credit, or request/token buckets that take more than an hour to refill
     (daily limits): real money or a daily cap;
   - `per-minute`: only buckets that refill within the hour: they say the next call goes
     through, not how much work the account has left;
   - `none`: no figure at all (a Gemini key that answered, an OpenRouter key without a limit).
3. Within a group, by headroom score, higher first: for windows, the weekly-scale headroom
   (windows of a day or longer) counts three times as much as the hours-scale one (`5h`);
   otherwise 1 − the most-used counted figure. A tie goes to the sooner reset (use it or lose it).

Buckets that refill within the hour never lower the score, and a WARNING that comes only from
one of them does not move the account down: it refills before the work is done. An empty one
still makes the account CRITICAL (maxed) until it refills.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypedDict

from .readings import QuotaReading
from .severity import WARN_AT, Severity, assess, effective_utilization

#: ranking groups, best first
CATEGORIES = ("available", "unknown", "maxed", "out_of_credit", "rejected", "invalid_key")
#: what a usable account's headroom is made of, best first
BASES = ("windows", "metered", "per-minute", "none")
#: a bucket that refills within this does not count toward headroom
SHORT = timedelta(hours=1)
#: windows at least this long are weekly-scale
LONG = timedelta(days=1)
#: weight of the weekly-scale headroom against the hours-scale one
LONG_WEIGHT = 0.75
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class RankedDict(TypedDict):
    """One account of the quota summary's ranking."""

    rank: int
    backend: str
    provider: str
    severity: str
    category: str
    basis: str | None
    headroom: float | None
    binding: str | None
    reset: str | None
    reasons: list[str]


@dataclass(slots=True)
class RankedAccount:
    rank: int
    backend: str
    provider: str
    severity: Severity
    #: available | unknown | maxed | out_of_credit | rejected | invalid_key
    category: str
    #: the ranking score 0-1 (see the module docstring); None when no figure is known
    headroom: float | None
    #: the counted window, bucket or credit that is the most used (the limit that bites first)
    binding: str | None
    #: when the binding limit frees up, if known
    reset: datetime | None
    reasons: list[str] = field(default_factory=list)
    reading: QuotaReading | None = None
    #: windows | metered | per-minute | none (usable accounts); None for the others
    basis: str | None = None

    def to_dict(self) -> RankedDict:
        return {
            "rank": self.rank,
            "backend": self.backend,
            "provider": self.provider,
            "severity": self.severity.value,
            "category": self.category,
            "basis": self.basis,
            "headroom": self.headroom,
            "binding": self.binding,
            "reset": self.reset.isoformat() if self.reset else None,
            "reasons": list(self.reasons),
        }


def window_length(name: str) -> timedelta | None:
    """The nominal length of a window from its name (`5h`, `7d`, `7d_oi`, `30m`); None when it has none."""
    m = re.match(r"(\d+)([mhdw])(?![a-z])", name)
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)]) if m else None


@dataclass(slots=True)
class _Figure:
    name: str
    used: float
    reset: datetime | None
    #: windows | long | hours | minute
    scale: str


def _figures(reading: QuotaReading, now: datetime | None) -> list[_Figure]:
    out: list[_Figure] = []
    for name, w in reading.windows.items():
        if name == "overage":  # informational: overage being off does not limit normal use
            continue
        util = effective_utilization(reading, name, now)
        if util is None:
            continue
        length = window_length(name)
        if length is None and w.reset is not None:
            length = w.reset - reading.timestamp
        # a window of unknown length counts as weekly-scale: the cautious reading
        out.append(_Figure(name, util, w.reset, "long" if length is None or length >= LONG else "hours"))
    for name, lim in reading.limits.items():
        if lim.unlimited or (now is not None and lim.reset is not None and lim.reset <= now):
            continue
        used = lim.fraction_used
        if used is None:
            continue
        # request/token buckets are per minute unless their refill time, as read, says otherwise
        slow = lim.reset is not None and lim.reset - reading.timestamp > SHORT
        out.append(_Figure(name, used, lim.reset, "bucket" if slow else "minute"))
    if reading.credit_usd is not None and reading.limit_usd:
        out.append(
            _Figure("credit", max(0.0, float(1 - reading.credit_usd / reading.limit_usd)), None, "credit")
        )
    return out


def headroom(
    reading: QuotaReading, now: datetime | None = None
) -> tuple[float | None, str | None, datetime | None, str]:
    """(score 0-1, binding figure, its reset, basis) of one reading; see the module docstring."""
    figs = _figures(reading, now)
    windows = [f for f in figs if f.scale in ("long", "hours")]
    metered = [f for f in figs if f.scale in ("bucket", "credit")]
    minute = [f for f in figs if f.scale == "minute"]
    if windows:
        basis, counted = "windows", windows + metered
        long_room = [1 - f.used for f in windows if f.scale == "long"]
        hours_room = [1 - f.used for f in windows if f.scale == "hours"]
        if long_room and hours_room:
            score = LONG_WEIGHT * min(long_room) + (1 - LONG_WEIGHT) * min(hours_room)
        else:
            score = min(long_room or hours_room)
        if metered:
            score = min(score, min(1 - f.used for f in metered))
    elif metered:
        basis, counted = "metered", metered
        score = min(1 - f.used for f in metered)
    elif minute:
        basis, counted = "per-minute", minute
        score = min(1 - f.used for f in minute)
    else:
        return None, None, None, "none"
    worst = max(counted, key=lambda f: f.used)
    return max(0.0, min(1.0, score)), worst.name, worst.reset, basis


def _without_minute_buckets(reading: QuotaReading) -> QuotaReading:
    """The reading without buckets that refill within the hour (they do not decide the ranking)."""
    keep = {
        n: lim
        for n, lim in reading.limits.items()
        if lim.remaining == 0 or (lim.reset is not None and lim.reset - reading.timestamp > SHORT)
    }
    return replace(reading, limits=keep)


def rank_accounts(
    latest_readings: Mapping[str, QuotaReading | None] | Iterable[QuotaReading],
    now: datetime,
    *,
    warn_at: float = WARN_AT,
) -> list[RankedAccount]:
    """Rank accounts (module docstring): usable ones by basis and score, then UNKNOWN, then maxed,
    out of credit, rejected and invalid-key accounts."""
    items: list[tuple[str, QuotaReading | None]]
    if isinstance(latest_readings, Mapping):
        items = list(latest_readings.items())
    else:
        items = [(r.backend, r) for r in latest_readings]
    rows: list[tuple[bool, RankedAccount]] = []
    for name, r in items:
        a = assess(r, warn_at=warn_at, now=now)
        basis: str | None = None
        room: float | None = None
        binding: str | None = None
        reset: datetime | None = None
        warn = False
        if r is not None:
            room, binding, reset, basis = headroom(r, now)
        if a.severity is Severity.CRITICAL:
            category = a.blocker or "rejected"
            basis = None
        elif a.severity is Severity.UNKNOWN:
            category, basis = "unknown", None
        else:
            category = "available"
            assert r is not None
            warn = assess(_without_minute_buckets(r), warn_at=warn_at, now=now).severity is Severity.WARNING
        rows.append(
            (
                warn,
                RankedAccount(
                    0,
                    name,
                    r.provider if r else "unknown",
                    a.severity,
                    category,
                    room,
                    binding,
                    reset,
                    a.reasons,
                    r,
                    basis,
                ),
            )
        )

    far = datetime.max.replace(tzinfo=now.tzinfo)

    def key(item: tuple[bool, RankedAccount]) -> tuple[int, bool, int, float, datetime, str]:
        warn, row = item
        room = row.headroom if row.headroom is not None else -1.0
        basis = BASES.index(row.basis) if row.basis in BASES else len(BASES)
        return (CATEGORIES.index(row.category), warn, basis, -round(room, 6), row.reset or far, row.backend)

    rows.sort(key=key)
    ranked = [row for _, row in rows]
    for i, row in enumerate(ranked, start=1):
        row.rank = i
    return ranked


def recommendation(ranked: list[RankedAccount]) -> tuple[list[str], list[str]]:
    """(use, avoid): the best usable account and every CRITICAL account."""
    usable = [r for r in ranked if r.category == "available"]
    use = [usable[0].backend] if usable else []
    avoid = [r.backend for r in ranked if r.severity is Severity.CRITICAL]
    return use, avoid
