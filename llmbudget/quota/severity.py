"""Severity of a quota reading: CRITICAL, WARNING, OK or UNKNOWN, with the reasons. Pure functions.

- CRITICAL: the provider rejects calls (`rejected`, HTTP 429), a window is maxed (utilization
  ≥ 100%) or a bucket has 0 remaining, the key is invalid (401/403), or the credit is used up.
- WARNING: a window or bucket at ≥ 80% (configurable), or `allowed_warning`.
- OK: a reading with quota data and nothing above.
- UNKNOWN: no reading, or a reading without any quota signal; the reason says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TypedDict

from .readings import QuotaReading

#: default fraction of a window or bucket at which an account is WARNING
WARN_AT = 0.8
#: windows whose own status is informational (overage being unavailable does not block normal use)
_INFO_WINDOWS = ("overage",)


class Severity(StrEnum):
    CRITICAL = "CRITICAL"
    WARNING = "WARNING"
    OK = "OK"
    UNKNOWN = "UNKNOWN"

    @property
    def mark(self) -> str:
        """The one-character mark used by `summary`."""
        return {"CRITICAL": "✗", "WARNING": "⚠", "OK": "✓", "UNKNOWN": "?"}[self.value]


#: display order, worst first
SEVERITY_ORDER = (Severity.CRITICAL, Severity.WARNING, Severity.OK, Severity.UNKNOWN)


class AssessmentDict(TypedDict):
    severity: str
    reasons: list[str]
    blocker: str | None


@dataclass(slots=True)
class Assessment:
    severity: Severity
    reasons: list[str] = field(default_factory=list)
    #: why a CRITICAL account is unusable: invalid_key | rejected | out_of_credit | maxed (None otherwise)
    blocker: str | None = None

    def to_dict(self) -> AssessmentDict:
        return {"severity": self.severity.value, "reasons": list(self.reasons), "blocker": self.blocker}


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _violation(v: Mapping[str, object]) -> str:
    name = str(v.get("quota_id") or v.get("quota_metric") or "?")
    return name + (f" (limit {v['quota_value']})" if v.get("quota_value") not in (None, "") else "")


def effective_utilization(reading: QuotaReading, name: str, now: datetime | None = None) -> float | None:
    """A window's utilization, or 0 when its reset has already passed at `now` (the reading is stale)."""
    w = reading.windows.get(name)
    if w is None or w.utilization is None:
        return None
    if now is not None and w.reset is not None and w.reset <= now:
        return 0.0
    return w.utilization


def assess(
    reading: QuotaReading | None, *, warn_at: float = WARN_AT, now: datetime | None = None
) -> Assessment:
    """Severity of one reading. With `now`, windows and buckets whose reset has passed no longer count."""
    if reading is None:
        return Assessment(Severity.UNKNOWN, ["no data"])
    crit: list[tuple[str, str]] = []
    warn: list[str] = []

    if reading.key_valid is False:
        crit.append(
            ("invalid_key", "invalid key" + (f" (HTTP {reading.http_status})" if reading.http_status else ""))
        )
    status = (reading.status or "").lower()
    if status == "rejected":
        crit.append(("rejected", "rejected by the provider"))
    elif status == "allowed_warning":
        warn.append("provider warns (allowed_warning)")
    elif status and status != "allowed":
        warn.append(f"unrecognized status {reading.status!r}")
    # with Gemini's violations the "quota exceeded" reason below already says why the call was refused
    if reading.http_status == 429 and status != "rejected" and not reading.violations:
        crit.append(("rejected", "rate-limited (HTTP 429)"))

    for name, w in reading.windows.items():
        util = effective_utilization(reading, name, now)
        if name not in _INFO_WINDOWS and (w.status or "") == "rejected" and util != 0.0:
            crit.append(("rejected", f"{name} window rejected"))
        if util is None:
            continue
        if util >= 1.0:
            crit.append(("maxed", f"{name} window maxed ({_pct(util)})"))
        elif util >= warn_at:
            warn.append(f"{name} window at {_pct(util)}")

    for name, lim in reading.limits.items():
        if lim.unlimited:
            continue
        if now is not None and lim.reset is not None and lim.reset <= now:
            continue
        if lim.remaining == 0:
            crit.append(("maxed", f"{name} remaining 0" + (f" of {lim.limit:,}" if lim.limit else "")))
            continue
        used = lim.fraction_used
        if used is not None and used >= warn_at:
            warn.append(f"{name} at {_pct(used)} ({lim.remaining:,} of {lim.limit:,} left)")

    if reading.credit_usd is not None and reading.credit_usd <= 0:
        crit.append(("out_of_credit", f"out of credit (${reading.credit_usd} left)"))
    elif reading.credit_usd is not None and reading.limit_usd:
        used_frac = float(1 - reading.credit_usd / reading.limit_usd)
        if used_frac >= warn_at:
            warn.append(f"credit at {_pct(used_frac)} (${reading.credit_usd} of ${reading.limit_usd} left)")

    if reading.violations:
        crit.append(("rejected", "quota exceeded: " + ", ".join(_violation(v) for v in reading.violations)))

    if crit:
        # invalid key outranks rejected outranks out of credit outranks maxed: it is the harder blocker
        order = ("invalid_key", "rejected", "out_of_credit", "maxed")
        blocker = min((c[0] for c in crit), key=order.index)
        return Assessment(Severity.CRITICAL, [c[1] for c in crit] + warn, blocker)
    if warn:
        return Assessment(Severity.WARNING, warn)
    if not reading.has_data:
        return Assessment(Severity.UNKNOWN, [reading.reason or "no quota data in the response"])
    reasons = [reading.reason] if reading.reason else []
    return Assessment(Severity.OK, reasons)


def overall(severities: Iterable[Severity]) -> str:
    """`Overall: 1 CRITICAL, 3 OK, 3 UNKNOWN` (worst first, zero counts left out)."""
    counts = Counter(severities)
    parts = [f"{counts[s]} {s.value}" for s in SEVERITY_ORDER if counts[s]]
    return "Overall: " + (", ".join(parts) if parts else "no accounts")
