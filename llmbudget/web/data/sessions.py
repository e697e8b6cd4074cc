"""The sessions page: the last sessions with their state, one session's per-agent breakdown, CSV rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ...errors import NotFound
from ...events import utcnow
from ...services import Services
from ...store import SessionRow
from ...store.buckets import from_us
from ...store.dashboard import session_breakdown, session_ends, session_exists
from .spend import usd

#: sessions on the sessions page
SESSIONS_SHOWN = 30


def _session_status(
    row: SessionRow, ended: tuple[int, str] | None, idle: timedelta, now: datetime
) -> dict[str, Any]:
    # a call after the client ended the session opens it again: an end is never before the last call
    if ended is not None and from_us(ended[0]) >= row.end:
        return {"end": from_us(ended[0]).isoformat(), "ended": True, "ended_by": ended[1]}
    if now - row.end >= idle:
        return {"end": (row.end).isoformat(), "ended": True, "ended_by": "idle"}
    return {"end": None, "ended": False, "ended_by": None}


def sessions(
    services: Services, now: datetime | None = None, limit: int = SESSIONS_SHOWN
) -> list[dict[str, Any]]:
    """The last sessions as Session ID | Start | End | Tokens | Cost | Agents."""
    now = now or utcnow()
    rows = services.ledger.sessions(limit=limit)
    ends = session_ends(services.ledger, [r.session for r in rows])
    idle = timedelta(minutes=services.config.dashboard.session_idle_minutes)
    out = []
    for r in rows:
        out.append(
            {
                "session": r.session,
                "start": r.start.isoformat(),
                **_session_status(r, ends.get(r.session), idle, now),
                "last_activity": r.end.isoformat(),
                "calls": r.calls,
                "tokens": r.tokens,
                "cost_nano": r.cost_nano,
                "cost_usd": usd(r.cost_nano),
                "unpriced_calls": r.unpriced_calls,
                "agents": list(r.agents),
            }
        )
    return out


SESSION_CSV_COLUMNS = ("session", "start", "end", "tokens", "cost_usd", "agents")


def session_csv_rows(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The sessions table's rows for CSV (cost numeric, agents joined)."""
    for s in items:
        yield {
            "session": s["session"],
            "start": s["start"],
            "end": s["end"] or "",
            "tokens": s["tokens"],
            "cost_usd": Decimal(s["cost_usd"]),
            "agents": " ".join(s["agents"]),
        }


def session_detail(services: Services, session: str, now: datetime | None = None) -> dict[str, Any]:
    """One session with its per-agent breakdown; 404 when unknown."""
    now = now or utcnow()
    ledger = services.ledger
    if not session_exists(ledger, session):
        raise NotFound(f"no session {session!r}")
    found = [s for s in sessions(services, now, limit=1000) if s["session"] == session]
    agents = session_breakdown(ledger, session)
    for a in agents:
        a["cost_usd"] = usd(a.pop("cost_nano"))
        a["first"] = from_us(a.pop("first_us")).isoformat()
        a["last"] = from_us(a.pop("last_us")).isoformat()
    head = found[0] if found else {"session": session}
    return {**head, "by_agent": agents}
