"""Run the utilization checks against live data and announce each finding once per cycle."""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from ..alerts import Notice
from ..events import utcnow
from ..store.base import Ledger
from .config import UtilizationConfig
from .enforcer import BudgetEnforcer
from .status import budget_status
from .utilization import Cycle, Finding, cycle_from_status, cycles_from_readings, findings

log = logging.getLogger("llmbudget.budget")


def current_cycles(
    enforcer: BudgetEnforcer, ledger: Ledger | None, cfg: UtilizationConfig, now: datetime
) -> list[Cycle]:
    """Cycles of `committed: true` budgets and of the newest quota readings."""
    cycles: list[Cycle] = []
    committed = [b for b in enforcer.budgets if b.committed]
    for st in budget_status(committed, enforcer.store, enforcer.tz, now):
        c = cycle_from_status(st, now)
        if c is not None:
            cycles.append(c)
    if ledger is not None:
        try:
            latest = ledger.latest_readings()
        except Exception as e:  # readings are optional input: say so in the log, keep the budgets
            log.warning("utilization readings_unavailable error=%s", type(e).__name__)
            latest = {}
        cycles.extend(cycles_from_readings(latest, now, windows=tuple(cfg.quota_windows)))
    return cycles


def check_utilization(
    enforcer: BudgetEnforcer, ledger: Ledger | None, cfg: UtilizationConfig, now: datetime | None = None
) -> list[Finding]:
    """Announce new findings (each once per cycle, across processes); returns the ones announced."""
    now = now or utcnow()
    announced: list[Finding] = []
    for f in findings(current_cycles(enforcer, ledger, cfg, now), cfg):
        if enforcer.store.claim_once(f.key):
            announced.append(f)
            if enforcer.notifier is not None:
                enforcer.notifier.notify(
                    Notice(
                        kind=f.kind,
                        level="info" if f.kind == "utilization_low" else "warning",
                        scope=f.cycle,
                        message=f.message,
                    )
                )
    return announced


class UtilizationWatcher:
    """A daemon thread running `check_utilization` every `interval_s`."""

    def __init__(self, enforcer: BudgetEnforcer, ledger: Ledger | None, cfg: UtilizationConfig) -> None:
        self.enforcer, self.ledger, self.cfg = enforcer, ledger, cfg
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmbudget-utilization", daemon=True)

    def start(self) -> UtilizationWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.check_interval_s):
            try:
                check_utilization(self.enforcer, self.ledger, self.cfg)
            except Exception:
                log.exception("utilization check_failed")

    def stop(self) -> None:
        self._stop.set()
