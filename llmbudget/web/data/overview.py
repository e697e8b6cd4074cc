"""The overview page: spend totals, budgets, agent cards, notices and the quota panel in one dict."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...alerts import list_notifications
from ...events import utcnow
from ...quota.readings import Window
from ...quota.rotation import rank_accounts, recommendation
from ...quota.summary import countdown, stored_latest
from ...services import Services
from .agents import agent_cards
from .budgets import budgets_panel
from .spend import spend_totals


def quota_panel(services: Services, now: datetime) -> dict[str, Any]:
    """One row per account: severity, 5h and 7d utilization, reset countdown; which account next."""
    latest = stored_latest(services.ledger)
    ranked = rank_accounts(latest, now, warn_at=services.config.quota.warn_at)
    use, avoid = recommendation(ranked)
    rows = []
    for r in ranked:
        rd = r.reading
        win = rd.windows if rd is not None else {}

        def util(name: str, win: dict[str, Window] = win) -> float | None:
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
