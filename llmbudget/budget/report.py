"""The budget report: what `llmbudget budget --json` prints and `GET /api/budgets` answers."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from ..config import Config
from ..events import utcnow
from ..store import Ledger
from .config import AlertsConfig
from .enforcer import BudgetEnforcer
from .pauses import PauseRecord
from .status import budget_status
from .utilization import CycleDict, recommend
from .watch import current_cycles


class UtilizationReport(TypedDict):
    cycles: list[CycleDict]
    #: `→ use X | avoid Y`
    recommendation: str | None


class BudgetReport(TypedDict):
    """What `llmbudget budget --json` prints and `GET /api/budgets` answers."""

    timezone: str
    generated_at: str
    #: `BudgetStatus.to_dict()` of each budget
    budgets: list[dict[str, Any]]
    paused_agents: list[PauseRecord]
    fallback: str | None
    utilization: NotRequired[UtilizationReport]


def budget_report(
    enf: BudgetEnforcer, ledger: Ledger, cfg: Config, *, utilization: bool = False
) -> BudgetReport:
    """Every budget's status, the paused agents and the fallback; with `utilization`, the current cycles
    and where to send work."""
    now = utcnow()
    out: BudgetReport = {
        "timezone": str(enf.tz.key),
        "generated_at": now.isoformat(),
        "budgets": [s.to_dict() for s in budget_status(enf.budgets, enf.store, enf.tz, now)],
        "paused_agents": sorted(enf.paused().values(), key=lambda p: p.get("agent", "")),
        "fallback": enf.fallback,
    }
    if utilization:
        ucfg = (cfg.alerts or AlertsConfig()).utilization
        cycles = current_cycles(enf, ledger, ucfg, now)
        out["utilization"] = {"cycles": [c.to_dict() for c in cycles], "recommendation": recommend(cycles)}
    return out
