"""The live agent cards: session tokens and cost, last request, cost per request and its trend, runaway."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ...agentstats import (
    ARROWS,
    HIGH_COST_NANO,
    TREND_WINDOW,
    avg_cost,
    cost_level,
    runaway,
    trend,
)
from ...services import Services
from ...store.buckets import from_us, to_us
from ...store.dashboard import agent_session_totals, newest_calls, spend_by_minute
from ..api_budget import serving_enforcer
from .spend import day_start, usd

#: agent cards shown on the overview at most (most expensive today first, active ones always)
MAX_CARDS = 60


def agent_cards(services: Services, now: datetime, *, only: str | None = None) -> list[dict[str, Any]]:
    """Live agent cards: session tokens and cost, last request, cost per request and trend, runaway."""
    ledger = services.ledger
    tz = services.config.zone()
    now_us = to_us(now)
    day = day_start(now, tz)
    today_rows = ledger.costs(since=day, until=now + timedelta(hours=1), by="agent", tz=tz)
    today = {r.key: r for r in today_rows if r.key}
    # each agent's newest TREND_WINDOW calls among the newest 2,000, and every agent's spend per
    # minute of age over the past hour (the runaway rule): both computed in SQL, so a busy hour
    # (14,000 calls at 10 M events a month) is never read into Python call by call
    recent: dict[str, list[tuple[Any, ...]]] = {}
    for row in newest_calls(ledger, 2000, TREND_WINDOW):
        recent.setdefault(row[0], []).append(row)
    by_minute: dict[str, list[tuple[int, int]]] = {}
    for agent, age, nano in sorted(spend_by_minute(ledger, now_us), key=lambda r: (r[1], r[0])):
        by_minute.setdefault(agent, []).append((now_us - age * 60_000_000, nano))

    try:
        paused = serving_enforcer(services).paused()
    except Exception:
        paused = {}
    names = list(recent)  # by their last call, then the rest of the past hour's by theirs
    names += [a for a in by_minute if a not in recent]
    names += [a for a in sorted(today, key=lambda a: -today[a].cost_nano) if a not in names]
    names += [a for a in sorted(paused) if a not in names]
    if only is not None:
        names = [only]
    names = names[:MAX_CARDS]
    last10: dict[str, list[tuple[int, int | None, int, str | None]]] = {}
    for a in names:
        rows = recent.get(a, [])
        if len(rows) >= TREND_WINDOW:
            last10[a] = [(int(r[2]), r[3], int(r[4]), r[1]) for r in rows[:TREND_WINDOW]]
        else:
            evs = ledger.query(filters={"agent": a}, limit=TREND_WINDOW)
            last10[a] = [
                (to_us(e.timestamp), e.cost_nano, e.input_tokens + e.output_tokens, e.session) for e in evs
            ]
    pairs = sorted({(rows[0][3], a) for a, rows in last10.items() if rows and rows[0][3]})
    session_totals = agent_session_totals(ledger, pairs)
    cards = []
    for a in names:
        rows = last10.get(a, [])
        costs = [c for _, c, _, _ in reversed(rows) if c is not None]
        session = rows[0][3] if rows else None
        st = session_totals.get((session, a)) if session else None
        if st is None:  # no session: the card shows the agent's day
            t = today.get(a)
            calls, tokens, cost = (t.calls, t.input_tokens + t.output_tokens, t.cost_nano) if t else (0, 0, 0)
        else:
            calls, tokens, cost = st[0], st[1], st[2]
        spend = by_minute.get(a, [])  # one point a minute, newest first
        flagged, current, baseline = runaway(spend, now_us)
        avg = avg_cost(costs)
        tr = trend(costs)
        p = paused.get(a)
        cards.append(
            {
                "agent": a,
                "session": session,
                "session_calls": calls,
                "session_tokens": tokens,
                "session_cost_nano": cost,
                "session_cost_usd": usd(cost),
                "level": cost_level(cost),
                "last_request": from_us(rows[0][0]).isoformat() if rows else None,
                "recent_costs_nano": costs,
                "avg_cost_nano": avg,
                "avg_cost_usd": usd(avg),
                "trend": tr,
                "arrow": ARROWS[tr],
                "high_cost": avg is not None and avg > HIGH_COST_NANO,
                "runaway": flagged,
                "spend_5m_nano": current,
                "baseline_5m_nano": baseline,
                "recent_spend": [list(x) for x in spend],
                "today_cost_usd": usd(today[a].cost_nano) if a in today else "0",
                "paused": p is not None,
                "paused_reason": (p or {}).get("reason"),
            }
        )
    return cards
