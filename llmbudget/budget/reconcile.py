"""Reconciling the budget counters with the ledger: after a batch that found its events ledgered, and periodically.

Mixed into `BudgetEnforcer`. The counters follow the ledger: `reconcile` recomputes each counter
of the current windows from the ledger plus what is still pending (imports, reprices and other
writers are caught up this way); `drift` reports what the last pass corrected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypedDict
from zoneinfo import ZoneInfo

from ..events import utcnow
from .booking import Booked, Pending
from .counters import CounterStore, LeaseResult, Reconciled
from .lease import LeaseBook
from .notices import BudgetNotices
from .rules import Budget
from .seed import SeedSpec, spec_for
from .status import live_specs

log = logging.getLogger("llmbudget.budget")


class DriftDict(TypedDict):
    """What the last reconciliation corrected, for the dashboard's health panel."""

    reconciled_at: str
    counters: int
    drifted: int
    drift_nano: int
    unledgered_nano: int


class Reconciliation(BudgetNotices):
    """Part of `BudgetEnforcer`: reconciling after a settlement batch and in a background thread.

    A batch's new totals are checked against the warning thresholds, hence `BudgetNotices` underneath.
    """

    # set by BudgetEnforcer
    budgets: list[Budget]
    store: CounterStore
    tz: ZoneInfo
    clock: Callable[[], datetime]
    book: LeaseBook
    on_freed: Callable[[], None] | None
    last_reconcile: dict[str, Reconciled]
    _reconciled_at: datetime | None
    _lock: threading.Lock
    _sessions: dict[str, float]
    _stop: threading.Event
    _reconciler: threading.Thread | None

    def _flushed(self, result: LeaseResult, notes: list[object]) -> None:
        """After a batch of settlements reached the counters: reconcile if needed, then warn and alert."""
        totals = dict(result.totals)
        # each counter once: a batch's calls nearly all share theirs (a session's window key names the
        # session, so a counter's seed spec is the same for every call on it)
        seen: set[str] = set()
        booked: list[Booked] = []
        specs: dict[str, SeedSpec] = {}
        for p in notes:
            if not isinstance(p, Pending):
                continue
            for x in p.booked:
                if x.charge.key not in seen:
                    seen.add(x.charge.key)
                    booked.append(x)
                    if result.ledgered:
                        specs.update(self._specs([x], p.call.session))
        if specs:
            # the ledger already had some events (its writer was faster): count them once, from the ledger
            try:
                for k, rec in self.store.reconcile(specs).items():
                    totals[k] = (rec.after, totals.get(k, (0, 0))[1])
            except Exception as e:
                log.error("budget reconcile_failed error=%s: %s", type(e).__name__, e)
        if booked:
            try:
                self._check_warnings(booked, totals)
            except Exception as e:
                log.error("budget warning_check_failed error=%s: %s", type(e).__name__, e)
        if self.on_freed is not None:
            self.on_freed()

    @staticmethod
    def _specs(booked: list[Booked], session: str | None) -> dict[str, SeedSpec]:
        return {
            key: spec_for(x.budget, x.value, x.window, wkey, session)
            for x in booked
            for wkey, key in zip(x.window.read_keys, x.charge.read_keys, strict=True)
        }

    # ------------------------------------------------------------------ reconciliation
    def reconcile(self) -> dict[str, Reconciled]:
        """Reconcile every counter of the current windows with the ledger (imports, reprices, other writers)."""
        cutoff = time.monotonic() - 24 * 3600
        with self._lock:
            for s in [s for s, t in self._sessions.items() if t < cutoff]:
                del self._sessions[s]
            sessions = set(self._sessions)
        specs = live_specs(self.budgets, self.store, self.tz, self.clock(), sessions=sessions)
        # settlements still in memory first: an event the ledger already holds whose spend is not
        # written yet would read as drift
        self.book.flush()
        result = self.store.reconcile(specs)
        drifted = {k: r.drift for k, r in result.items() if r.drift}
        if drifted:
            # the counters moved (imports, reprices, another replica's reconciliation): the lease's
            # unused part goes back, so the next calls are checked against the new figures. Without
            # drift the figures the lease was taken against still hold: giving it back would only
            # make every call in flight ask the store at once
            self.book.flush(final=True)
            log.info("budget reconciled counters=%d drifted=%s", len(result), drifted)
        self.last_reconcile = result
        self._reconciled_at = utcnow()
        return result

    def drift(self) -> DriftDict | None:
        """What the last reconciliation corrected (dashboard health; no I/O), None before the first."""
        if self._reconciled_at is None:
            return None
        moved = {k: r.drift for k, r in self.last_reconcile.items() if r.drift}
        return {
            "reconciled_at": self._reconciled_at.isoformat(),
            "counters": len(self.last_reconcile),
            "drifted": len(moved),
            "drift_nano": sum(moved.values()),
            "unledgered_nano": sum(r.unledgered for r in self.last_reconcile.values()),
        }

    def start_reconciler(self, interval_s: float) -> None:
        """Reconcile every `interval_s` seconds in a daemon thread (serve; wrap() with a gate)."""
        if self._reconciler is not None or not self.budgets or interval_s <= 0:
            return

        def loop() -> None:
            while True:  # at start (a restart picks up what happened while it was down), then periodically
                try:
                    self.reconcile()
                except Exception as e:  # the next round tries again; enforcement fails closed meanwhile
                    log.error("budget reconcile_failed error=%s: %s", type(e).__name__, e)
                if self._stop.wait(interval_s):
                    return

        self._reconciler = threading.Thread(target=loop, daemon=True, name="llmbudget-reconcile")
        self._reconciler.start()
