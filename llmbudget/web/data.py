"""What the dashboard shows, as JSON-ready dicts: one builder per page or panel, shared by the HTML
pages and the `/api/...` JSON routes (so both always say the same thing).

Totals come from the ledger's rollups (`Ledger.costs`); raw events are read only through an index
and a limit (the last hour's activity, one session's events, the newest refusals).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..agentstats import (
    ARROWS,
    HIGH_COST_NANO,
    TREND_WINDOW,
    avg_cost,
    cost_level,
    runaway,
    trend,
)
from ..alerts import list_notifications
from ..budget.forecast import burn_rate, month_bounds, project, run_out
from ..budget.glance import glance
from ..budget.status import budget_status
from ..errors import NotFound, ValidationError
from ..events import TOKEN_FIELDS, UsageEvent, parse_timestamp, utcnow
from ..money import decimal_str, from_nano
from ..quota.rotation import rank_accounts, recommendation
from ..quota.summary import countdown, stored_latest
from ..services import Services
from ..store.buckets import from_us, to_us
from ..store.dashboard import (
    agent_session_totals,
    newest_calls,
    session_breakdown,
    session_ends,
    session_exists,
    spend_by_minute,
)
from ..timeranges import parse_since
from .api_budget import _enforcer

log = logging.getLogger(__name__)

#: agent cards shown on the overview at most (most expensive today first, active ones always)
MAX_CARDS = 60
#: sessions on the sessions page
SESSIONS_SHOWN = 30


def usd(nano: int | None) -> str | None:
    """An exact decimal string of nano-USD (None stays None: unpriced is not $0)."""
    return None if nano is None else decimal_str(from_nano(nano))


def _totals(rows: list[Any]) -> dict[str, Any]:
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


def _day_start(now: datetime, tz: ZoneInfo) -> datetime:
    return now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)


def spend_totals(ledger: Any, tz: ZoneInfo, now: datetime) -> dict[str, Any]:
    """Today's and this month's totals and the month-end projection: one rollup read by day.

    The burn rate is the spend of the 7 whole days before today and of today so far, over that
    time, or over the time since the first day with calls when the ledger is younger (floored at
    an hour): a first day of use projects from today's burn instead of from $0/day.
    """
    day = _day_start(now, tz)
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


# ---------------------------------------------------------------- budgets and enforcement
def budgets_panel(services: Services, now: datetime, *, compare: bool = True) -> dict[str, Any]:
    """Every budget with progress, state and run-out forecast; enforcement health.

    Nothing here writes. `compare=False` (the overview) reads the counters only; the budgets page
    also reads what the ledger's rollups hold for each counter's window (`CounterStore.check`, one
    statement per counter) and shows the drift between the two as it is now. The serving process
    reconciles them in the background (`budgets.reconcile_interval_s`); `last_reconcile` says when
    it last did and what it corrected.
    """
    enf = _enforcer(services)
    out: dict[str, Any] = {"budgets": [], "paused_agents": [], "enforcement": {}}
    try:
        if compare:
            statuses = budget_status(enf.budgets, enf.store, enf.tz, now, reconcile=False)
        else:
            statuses = glance(enf.budgets, enf.store, enf.tz, now, ledger=services.ledger)
        failing = None
    except Exception as e:  # the counter store is unreachable: say so, the page still renders
        statuses = []
        failing = f"{type(e).__name__}: counters unreadable"
    reserved = settled = 0
    for s in statuses:
        d = s.to_dict()
        w = s.window
        ro = run_out(
            s.budget.limit,
            s.spent + s.reserved,
            now=now,
            window_start=w.start if w else None,
            reset=w.reset if w else None,
        )
        d["forecast"] = ro.to_dict()
        d["label"] = {"ok": "OK", "warning": "⚠ WARNING", "exhausted": "✖ EXHAUSTED"}[s.state]
        if s.budget.unit == "usd":
            reserved += s.reserved
            settled += s.spent
        out["budgets"].append(d)
    paused = enf.paused()
    out["paused_agents"] = sorted(paused.values(), key=lambda p: p.get("agent", ""))
    out["refusals"] = refusals(services.ledger, paused)
    on_error = getattr(getattr(services.config, "budgets", None), "on_error", None) or "closed"
    out["enforcement"] = {
        "active": bool(enf.budgets),
        "counters": type(enf.store).__name__,
        "reserved_usd": usd(reserved),
        "settled_usd": usd(settled),
        "on_error": on_error,
        "failing": failing,
        "failing_closed": failing is not None and on_error != "open",
        # counter minus (ledger + settled but not in the ledger yet), per budget, as it is now
        "drift": (
            {d["name"] + (f" {d['value']}" if d.get("value") else ""): d.get("drift") for d in out["budgets"]}
            if compare and statuses
            else None
        ),
        "compared": compare and failing is None,
        "last_reconcile": _drift(services),
    }
    return out


def _drift(services: Services) -> Any:
    """Counter-vs-ledger drift, when the enforcer can tell (None otherwise)."""
    enf = services.enforcer
    fn = getattr(enf, "drift", None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception as e:
        return {"error": type(e).__name__}


def refusals(ledger: Any, paused: dict[str, Any], limit: int = 10) -> list[dict[str, Any]]:
    """The newest refused calls (status blocked) with their reason."""
    evs = ledger.query(filters={"status": "blocked"}, limit=limit)

    def reason(e: UsageEvent) -> str:
        if e.reason:
            return e.reason
        if e.agent and e.agent in paused:
            return f"agent {e.agent} paused: {paused[e.agent].get('reason') or 'by hand'}"
        return "budget limit reached"

    return [
        {
            "id": e.id,
            "timestamp": e.timestamp.isoformat(),
            "agent": e.agent,
            "backend": e.backend,
            "model": e.model,
            "http_status": e.http_status,
            "reason": reason(e),
        }
        for e in evs
    ]


# ---------------------------------------------------------------- agents
def agent_cards(services: Services, now: datetime, *, only: str | None = None) -> list[dict[str, Any]]:
    """Live agent cards: session tokens and cost, last request, cost per request and trend, runaway."""
    ledger = services.ledger
    tz = services.config.zone()
    now_us = to_us(now)
    day = _day_start(now, tz)
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
        paused = _enforcer(services).paused()
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


# ---------------------------------------------------------------- quota
def quota_panel(services: Services, now: datetime) -> dict[str, Any]:
    """One row per account: severity, 5h and 7d utilization, reset countdown; which account next."""
    latest = stored_latest(services.ledger)
    ranked = rank_accounts(latest, now, warn_at=services.config.quota.warn_at)
    use, avoid = recommendation(ranked)
    rows = []
    for r in ranked:
        rd = r.reading
        win = rd.windows if rd is not None else {}

        def util(name: str, win: Any = win) -> float | None:
            w = win.get(name)
            return None if w is None or w.utilization is None else round(w.utilization * 100, 1)

        reset = r.reset or (rd.reset if rd is not None else None)
        rows.append(
            {
                "backend": r.backend,
                "provider": r.provider,
                "severity": r.severity.value,
                "mark": r.severity.mark,
                "category": r.category,
                "utilization_5h": util("5h"),
                "utilization_7d": util("7d"),
                "reset": reset.isoformat() if reset else None,
                "reset_in": countdown(reset, now) if reset else None,
                "reasons": list(r.reasons[:2]),
                "rank": r.rank,
            }
        )
    return {"accounts": rows, "use": use, "avoid": avoid}


# ---------------------------------------------------------------- overview
def overview(services: Services, now: datetime | None = None) -> dict[str, Any]:
    """Everything the overview page shows."""
    now = now or utcnow()
    tz = services.config.zone()
    out: dict[str, Any] = {"generated_at": now.isoformat(), "timezone": str(tz.key)}
    out.update(spend_totals(services.ledger, tz, now))
    out.update(budgets_panel(services, now, compare=False))
    out["agents"] = agent_cards(services, now)
    out["notifications"] = list_notifications(services.ledger, limit=10)
    out["quota"] = quota_panel(services, now)
    return out


# ---------------------------------------------------------------- sessions
def _session_status(
    row: Any, ended: tuple[int, str] | None, idle: timedelta, now: datetime
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


# ---------------------------------------------------------------- events and their cost
EVENT_FILTERS = ("agent", "session", "backend", "model", "status", "user", "team", "tier", "provider")


def events_list(services: Services, params: dict[str, str], limit: int = 100) -> list[dict[str, Any]]:
    """Newest events matching exact-match filters (and `since`)."""
    filters = {k: v for k, v in params.items() if k in EVENT_FILTERS and v}
    since = None
    if params.get("since"):
        since = parse_since(params["since"], zone=services.config.zone(), option="since")
    evs = services.ledger.query(since=since, filters=filters or None, limit=limit)
    return [_event_row(e) for e in evs]


def _event_row(e: UsageEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "timestamp": e.timestamp.isoformat(),
        "agent": e.agent,
        "session": e.session,
        "backend": e.backend,
        "model": e.model,
        "status": e.status,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "tokens": e.input_tokens + e.output_tokens,
        "cost_usd": usd(e.cost_nano),
        "price_status": e.price_status,
    }


_KINDS = (
    ("input", "input_mtok", "uncached input"),
    ("cached", "cache_read_mtok", "cached input (read)"),
    ("cache_write", "cache_write_mtok", "cache write"),
    ("output", "output_mtok", "output (excl. reasoning)"),
    ("reasoning", "output_mtok", "reasoning (billed as output)"),
)


def explain(services: Services, event_id: str) -> dict[str, Any]:
    """Why a call cost what it did: tokens by kind × the price in force on its date, and the price's source."""
    e = services.ledger.get(event_id)
    if e is None:
        raise NotFound(f"no event {event_id!r}")
    uncached = max(0, e.input_tokens - e.cached_input_tokens - e.cache_write_tokens)
    tokens = {
        "input": uncached,
        "cached": e.cached_input_tokens,
        "cache_write": e.cache_write_tokens,
        "output": max(0, e.output_tokens - e.reasoning_tokens),
        "reasoning": e.reasoning_tokens,
    }
    out: dict[str, Any] = {
        "event": _event_row(e),
        "tokens": {k: e.__getattribute__(k) for k in TOKEN_FIELDS},
        "price_status": e.price_status,
        "cost_usd": usd(e.cost_nano),
        "lines": [],
    }
    if e.price_status == "local":
        out["source"] = "local backend: calls cost $0"
        return out
    info = services.prices.lookup(e.model, provider=e.provider, at=e.timestamp)
    if info is None:
        out["source"] = (
            services.prices.why_unpriced(e.model, provider=e.provider, at=e.timestamp) or "unpriced"
        )
        return out
    out["source"] = info.source
    out["price"] = info.to_dict()
    total = Decimal(0)
    for kind, key, label in _KINDS:
        n = tokens[kind]
        price = getattr(info, key)
        if price is None:
            price = info.input_mtok if kind in ("cached", "cache_write") else info.output_mtok
        if price is None:
            price = Decimal(0)
        line_cost = price * n / Decimal(1_000_000)
        total += line_cost
        out["lines"].append(
            {
                "kind": kind,
                "label": label,
                "tokens": n,
                "price_per_mtok": str(price),
                "cost_usd": decimal_str(line_cost.quantize(Decimal("1E-9"))),
            }
        )
    if info.request_usd:
        total += info.request_usd
        out["lines"].append(
            {
                "kind": "request",
                "label": "per request",
                "tokens": 1,
                "price_per_mtok": None,
                "cost_usd": decimal_str(info.request_usd),
            }
        )
    out["computed_usd"] = decimal_str(total.quantize(Decimal("1E-9")))
    out["tiers_note"] = (
        "tiered price: the whole call pays the tier its input size falls in" if info.tiers else None
    )
    out["effective_from"] = None if info.effective_from is None else info.effective_from.isoformat()
    return out


def parse_when(value: str, field: str) -> datetime:
    try:
        return parse_timestamp(value)
    except (ValueError, ValidationError):
        raise ValidationError(field, f"cannot read {value!r} as a time") from None
