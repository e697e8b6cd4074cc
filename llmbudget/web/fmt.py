"""Display formats shared by the pages (the page script mirrors them for live updates)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from ..money import from_nano


def money(nano: int | None) -> str:
    """`$12.34`, `$0.12`, `$0.008`, `$0.00015`; `unpriced` for None (never $0)."""
    if nano is None:
        return "unpriced"
    v = from_nano(nano)
    if v == 0:
        return "$0"
    if v >= Decimal("0.1"):
        return f"${v:,.2f}"
    if v >= Decimal("0.001"):
        return f"${v:.3f}"
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return f"${text}" if text != "0" else "<$0.000001"


def tokens(n: int) -> str:
    return f"{n:,}"


def clock(iso: str | None, tz: ZoneInfo) -> str:
    """`HH:MM:SS` in the configured zone (with the date when not today)."""
    if not iso:
        return "never"
    dt = datetime.fromisoformat(iso).astimezone(tz)
    today = datetime.now(tz).date()
    return dt.strftime("%H:%M:%S") if dt.date() == today else dt.strftime("%Y-%m-%d %H:%M")


def when(iso: str | None, tz: ZoneInfo) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M")
