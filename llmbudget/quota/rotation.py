"""Which account to use next: accounts ranked by headroom; maxed, rejected and invalid-key accounts last.

Shared by `llmbudget summary` and `llmbudget analyze --rotation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .readings import QuotaReading
from .severity import WARN_AT, Severity, assess, effective_utilization

#: ranking groups, best first
CATEGORIES = ("available", "unknown", "maxed", "out_of_credit", "rejected", "invalid_key")


@dataclass(slots=True)
class RankedAccount:
    rank: int
    backend: str
    provider: str
    severity: Severity
    #: available | unknown | maxed | out_of_credit | rejected | invalid_key
    category: str
    #: 1 - the highest utilization of any window or bucket (0-1); None when no figure is known
    headroom: float | None
    #: the window or bucket that binds (the most used)
    binding: str | None
    #: the soonest reset among the windows (when the binding one frees up, if known)
    reset: datetime | None
    reasons: list[str] = field(default_factory=list)
    reading: QuotaReading | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "backend": self.backend, "provider": self.provider,
            "severity": self.severity.value, "category": self.category, "headroom": self.headroom,
            "binding": self.binding, "reset": self.reset.isoformat() if self.reset else None,
            "reasons": list(self.reasons),
        }


def headroom(reading: QuotaReading, now: datetime | None = None) -> tuple[float | None, str | None, datetime | None]:
    """(headroom 0-1, binding window/bucket name, its reset) from the most-used window or bucket."""
    worst: tuple[float, str, datetime | None] | None = None
    for name, w in reading.windows.items():
        if name == "overage":
            continue
        util = effective_utilization(reading, name, now)
        if util is not None and (worst is None or util > worst[0]):
            worst = (util, name, w.reset)
    for name, lim in reading.limits.items():
        if lim.unlimited or (now is not None and lim.reset is not None and lim.reset <= now):
            continue
        used = lim.fraction_used
        if used is not None and (worst is None or used > worst[0]):
            worst = (used, name, lim.reset)
    if reading.credit_usd is not None and reading.limit_usd:
        used = float(1 - reading.credit_usd / reading.limit_usd)
        if worst is None or used > worst[0]:
            worst = (used, "credit", None)
    if worst is None:
        return None, None, None
    return max(0.0, 1.0 - worst[0]), worst[1], worst[2]


def rank_accounts(latest_readings: Mapping[str, QuotaReading | None] | Iterable[QuotaReading], now: datetime,
                  *, warn_at: float = WARN_AT) -> list[RankedAccount]:
    """Rank accounts: usable ones by headroom (ties: sooner reset first, use it or lose it), then
    UNKNOWN, then maxed, out of credit, rejected and invalid-key accounts last."""
    items: list[tuple[str, QuotaReading | None]]
    if isinstance(latest_readings, Mapping):
        items = list(latest_readings.items())
    else:
        items = [(r.backend, r) for r in latest_readings]
    rows: list[RankedAccount] = []
    for name, r in items:
        a = assess(r, warn_at=warn_at, now=now)
        room, binding, reset = headroom(r, now) if r is not None else (None, None, None)
        if a.severity is Severity.CRITICAL:
            category = a.blocker or "rejected"
        elif a.severity is Severity.UNKNOWN:
            category = "unknown"
        else:
            category = "available"
        rows.append(RankedAccount(0, name, r.provider if r else "unknown", a.severity, category, room, binding,
                                  reset, a.reasons, r))

    far = datetime.max.replace(tzinfo=now.tzinfo)

    def key(row: RankedAccount) -> tuple[Any, ...]:
        # a usable account with no figure (e.g. Gemini OK) sorts after those with known headroom
        room = row.headroom if row.headroom is not None else -1.0
        return (CATEGORIES.index(row.category), row.severity is Severity.WARNING, -room,
                row.reset or far, row.backend)

    rows.sort(key=key)
    for i, row in enumerate(rows, start=1):
        row.rank = i
    return rows


def recommendation(ranked: list[RankedAccount]) -> tuple[list[str], list[str]]:
    """(use, avoid): the best usable account(s) and every CRITICAL account."""
    usable = [r for r in ranked if r.category == "available"]
    use = [usable[0].backend] if usable else []
    avoid = [r.backend for r in ranked if r.severity is Severity.CRITICAL]
    return use, avoid
