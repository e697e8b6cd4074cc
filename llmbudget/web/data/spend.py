"""Money as the dashboard shows it, and the spend totals: today, this month, the month-end forecast."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ...budget.forecast import burn_rate, month_bounds, project
from ...money import decimal_str, from_nano
from ...store import CostRow, Ledger


def usd(nano: int | None) -> str | None:
    """An exact decimal string of nano-USD (None stays None: unpriced is not $0)."""
    return None if nano is None else decimal_str(from_nano(nano))


def _totals(rows: list[CostRow]) -> dict[str, Any]:
    calls = sum(r.calls for r in rows)
    nano = sum(r.cost_nano for r in rows)
    return {
        "calls": calls,
        "tokens": sum(r.input_tokens + r.output_tokens for r in rows),
        "input_tokens": sum(r.input_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
        "cost_nano": nano,
        "cost_usd": usd(nano),
        "unpriced_calls": sum(r.unpriced_calls for r in rows),
    }


def day_start(now: datetime, tz: ZoneInfo) -> datetime:
    """Midnight of `now`'s day in `tz`."""
    return now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)


def spend_totals(ledger: Ledger, tz: ZoneInfo, now: datetime) -> dict[str, Any]:
    """Today's and this month's totals and the month-end projection: one rollup read by day.

    The burn rate is the spend of the 7 whole days before today and of today so far, over that
    time, or over the time since the first day with calls when the ledger is younger (floored at
    an hour): a first day of use projects from today's burn instead of from $0/day.
    """
    day = day_start(now, tz)
    month_start, month_end = month_bounds(now.astimezone(tz))
    week_start = day - timedelta(days=7)
    rows = ledger.costs(since=min(month_start, week_start), until=day + timedelta(days=1), by="day", tz=tz)
    today_key, month_key, week_key = (d.strftime("%Y-%m-%d") for d in (day, month_start, week_start))
    today = _totals([r for r in rows if r.key == today_key])
    month = _totals([r for r in rows if (r.key or "") >= month_key])
    recent = [r for r in rows if (r.key or "") >= week_key and r.calls]
    trailing = _totals(recent)
    since = week_start
    used = [r.key for r in rows if r.calls and r.key]
    if used:
        since = max(week_start, datetime.strptime(min(used), "%Y-%m-%d").replace(tzinfo=tz))
    rate = burn_rate(trailing["cost_nano"], now - since)
    projected = project(month["cost_nano"], rate, now, month_end)
    return {
        "today": today,
        "month": month,
        "forecast": {
            "month_end_projected_usd": usd(projected),
            "month_end_projected_nano": projected,
            "trailing_7d_usd": trailing["cost_usd"],
            "per_day_usd": usd(round(rate * 86400)),
            "rate_since": since.isoformat(),
            "rate_basis": "last 7 days" if since == week_start else f"since {since:%b} {since.day}",
            "month_end": month_end.isoformat(),
        },
    }
