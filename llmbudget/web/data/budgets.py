"""The budgets panel: every budget's progress, state and run-out forecast; enforcement health; refusals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ...budget.forecast import run_out
from ...budget.glance import glance
from ...budget.status import budget_status
from ...events import UsageEvent
from ...services import Services
from ...store import Ledger
from ..api_budget import serving_enforcer
from .spend import usd


def budgets_panel(services: Services, now: datetime, *, compare: bool = True) -> dict[str, Any]:
    """Every budget with progress, state and run-out forecast; enforcement health.

    Nothing here writes. `compare=False` (the overview) reads the counters only; the budgets page
    also reads what the ledger's rollups hold for each counter's window (`CounterStore.check`, one
    statement per counter) and shows the drift between the two as it is now. The serving process
    reconciles them in the background (`budgets.reconcile_interval_s`); `last_reconcile` says when
    it last did and what it corrected.
    """
    enf = serving_enforcer(services)
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


def _drift(services: Services) -> dict[str, Any] | None:
    """Counter-vs-ledger drift, when the enforcer can tell (None otherwise)."""
    enf = services.enforcer
    fn: Callable[[], dict[str, Any] | None] | None = getattr(enf, "drift", None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception as e:
        return {"error": type(e).__name__}


def refusals(ledger: Ledger, paused: dict[str, Any], limit: int = 10) -> list[dict[str, Any]]:
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
