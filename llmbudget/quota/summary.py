"""The compact quota block an agent's wake prompt can include, ending with a recommendation.

Readings younger than `max_age` (default 20 minutes) are reused from the ledger; only the
accounts without one are probed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from ..config import Config
from ..errors import ConfigError, StorageError, ValidationError
from ..money import format_exact, format_usd
from ..store.base import Ledger
from .probe import probe_all
from .readings import QuotaReading
from .readings_log import latest_by_backend, read_log, store_reading
from .rotation import RankedAccount, rank_accounts, recommendation
from .severity import Severity

log = logging.getLogger("llmbudget.quota")

DEFAULT_MAX_AGE = timedelta(minutes=20)
_FIRST_WINDOWS = ("5h", "7d")


@dataclass(slots=True)
class Summary:
    generated_at: datetime
    ranked: list[RankedAccount]
    use: list[str]
    avoid: list[str]
    probed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    #: readings that could not be stored (`account: reason`); the block is still complete
    storage_errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per account (in configured-then-seen order is less useful than ranked: best first)."""
        width = max((len(r.backend) for r in self.ranked), default=0)
        out = [
            f"{r.severity.mark} {r.backend.ljust(width)}  {describe(r, self.generated_at)}"
            for r in self.ranked
        ]
        out.append(recommendation_line(self.use, self.avoid))
        return out

    def text(self) -> str:
        head = f"Quota at {self.generated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        if self.reused:
            head += f" ({len(self.reused)} from readings, {len(self.probed)} probed)"
        return "\n".join([head + ":", *self.lines()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "accounts": [
                {
                    **r.to_dict(),
                    "mark": r.severity.mark,
                    "line": describe(r, self.generated_at),
                    "reading_at": r.reading.timestamp.isoformat() if r.reading else None,
                    "source": r.reading.source if r.reading else None,
                }
                for r in self.ranked
            ],
            "use": list(self.use),
            "avoid": list(self.avoid),
            "recommendation": recommendation_line(self.use, self.avoid),
            "probed": list(self.probed),
            "reused": list(self.reused),
            "storage_errors": list(self.storage_errors),
            "text": self.text(),
        }


def parse_max_age(text: str) -> timedelta:
    """`20m`, `1h`, `90s`, `1h30m`, or a bare number of minutes."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return timedelta(minutes=float(t))
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", t)
    if not t or m is None or not any(m.groups()):
        raise ValidationError("max_age", f"expected a duration such as 20m, 1h or 90s, got {text!r}")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return timedelta(hours=h, minutes=mi, seconds=s)


def _span(d: timedelta) -> str:
    secs = int(d.total_seconds())
    return f"{secs // 60}m" if secs % 60 == 0 else f"{secs}s"


def recommendation_line(use: list[str], avoid: list[str]) -> str:
    return f"→ Current recommendation: use {', '.join(use) or 'none'} | avoid {', '.join(avoid) or 'none'}"


def countdown(when: datetime | None, now: datetime) -> str:
    """`2h13m`, `45m`, `3d4h`, `now`."""
    if when is None:
        return "?"
    secs = int((when - now).total_seconds())
    if secs <= 0:
        return "now"
    d, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    if d:
        return f"{d}d{h}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{max(m, 1)}m"


def describe(row: RankedAccount, now: datetime) -> str:
    """A short account line: utilizations, headroom, credit and the binding reset, or why it is down."""
    r = row.reading
    if r is None:
        return "no reading"
    parts: list[str] = []
    names = [n for n in _FIRST_WINDOWS if n in r.windows] + sorted(
        n for n in r.windows if n not in _FIRST_WINDOWS
    )
    for name in names:
        w = r.windows[name]
        if w.utilization is not None:
            parts.append(f"{name} {w.utilization * 100:.0f}%")
    for name, lim in r.limits.items():
        if lim.remaining is not None and lim.limit:
            parts.append(f"{name} {lim.remaining:,}/{lim.limit:,} left")
    if r.credit_usd is not None:
        parts.append(
            f"{format_usd(r.credit_usd, 2)} credit left"
            + (f" of {format_exact(r.limit_usd)}" if r.limit_usd else "")
        )
    if row.reset is not None:
        parts.append(f"{row.binding} resets in {countdown(row.reset, now)}")
    elif r.reset is not None:
        parts.append(f"resets in {countdown(r.reset, now)}")
    if row.severity in (Severity.CRITICAL, Severity.UNKNOWN, Severity.WARNING) and row.reasons:
        parts.append("; ".join(row.reasons[:2]))
    if r.retry_delay_s is not None:
        parts.append(f"retry in {r.retry_delay_s:g}s")
    return " · ".join(parts) if parts else (r.reason or "no quota data")


def stored_latest(ledger: Ledger | None, log_dir: Path | None = None) -> dict[str, QuotaReading]:
    """Newest stored reading per account: from the ledger, or from the JSONL log without one."""
    if ledger is not None:
        return latest_by_backend(ledger.latest_readings())
    return latest_by_backend(read_log(log_dir))


async def build_summary_async(
    cfg: Config,
    ledger: Ledger | None,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
    now: datetime | None = None,
    probe: bool = True,
    log_readings: bool = True,
    log_dir: Path | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Summary:
    """Reuse fresh readings, probe the configured accounts that have none, rank and recommend.

    Probes go out on `session` when given (the server's, kept open), else on one of their own.
    The ledger's blocking reads and writes run in a worker thread, so the caller's event loop
    keeps serving meanwhile.
    """
    now = now or datetime.now(UTC)
    latest = await asyncio.to_thread(stored_latest, ledger, log_dir)
    fresh = {name: r for name, r in latest.items() if now - r.timestamp <= max_age}
    if not cfg.providers and not fresh:
        # an empty block would read as "all fine" to an agent
        raise ConfigError(
            "no providers configured and no quota reading younger than "
            f"{_span(max_age)}: add a `providers:` section (README, 'Quota watch') "
            "or serve traffic through the proxy",
            path=cfg.source_path,
        )
    configured = [p.name for p in cfg.providers]
    stale = [p for p in cfg.providers if p.name not in fresh]
    probed: list[QuotaReading] = await probe_all(stale, session=session) if probe else []
    storage_errors: list[str] = []
    if log_readings and probed:
        storage_errors = await asyncio.to_thread(_store_readings, ledger, probed, log_dir)
    current: dict[str, QuotaReading | None] = {name: fresh.get(name) for name in configured}
    current.update({r.backend: r for r in probed})
    # backends seen only in real traffic (piggyback) join when their reading is fresh
    for name, r in fresh.items():
        current.setdefault(name, r)
    ranked = rank_accounts(current, now, warn_at=cfg.quota.warn_at)
    use, avoid = recommendation(ranked)
    return Summary(
        now,
        ranked,
        use,
        avoid,
        probed=[r.backend for r in probed],
        reused=[n for n in current if n in fresh],
        storage_errors=storage_errors,
    )


def _store_readings(ledger: Ledger | None, readings: list[QuotaReading], log_dir: Path | None) -> list[str]:
    """Store each probed reading; the ones that could not be stored, as `account: reason`."""
    errors: list[str] = []
    for r in readings:
        try:
            store_reading(ledger, r, log_dir=log_dir)
        except (StorageError, OSError) as e:
            errors.append(f"{r.backend}: {e}")
            log.info("quota reading not stored account=%s error=%s", r.backend, e)
    return errors


def build_summary(cfg: Config, ledger: Ledger | None, **kw: Any) -> Summary:
    """`build_summary_async` for synchronous callers (the CLI)."""
    return asyncio.run(build_summary_async(cfg, ledger, **kw))
