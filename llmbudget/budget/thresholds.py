"""Alert thresholds per session and per agent, edited in the dashboard and applied on every replica.

A threshold (stored in the ledger's `alert_thresholds` table) says: when an agent's spend reaches
`limit` — in its current session (`scope: session`) or today in the configured time zone
(`scope: agent`) — post a notice naming the agent, its spend and the threshold, once per session
or day; with `auto_pause` also pause the agent, so its next call is refused. A threshold for
agent `*` applies to every agent without one of its own.

Every serving process runs a `ThresholdWatch` over its own recorded events (fed by the live
fan-out, off the request path). It reads the thresholds with a one-second cache, so an edit is
in force on every replica within a second, and reads spend from the ledger after its flush
interval, so the call that crossed the line is counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ..alerts import Notice, Notifier
from ..events import UsageEvent, utcnow
from ..money import format_usd, from_nano
from ..store.base import Ledger
from ..store.dashboard import ANY_AGENT, Threshold, agent_session_totals, list_thresholds

log = logging.getLogger("llmbudget.budget")

FIRED_NS = "threshold_fired"
CACHE_S = 1.0


def applicable(thresholds: list[Threshold], agent: str) -> dict[str, Threshold]:
    """scope -> the threshold that applies to `agent` (its own, else the `*` one)."""
    out: dict[str, Threshold] = {t.scope: t for t in thresholds if t.agent == ANY_AGENT}
    for t in thresholds:
        if t.agent == agent:
            out[t.scope] = t
    return out


class ThresholdWatch:
    """Checks each recorded call's agent against its thresholds in a background thread."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        tz: ZoneInfo,
        notifier: Notifier | None,
        pause: Callable[[str, str], None] | None,
        delay_s: float = 0.3,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ledger = ledger
        self.tz = tz
        self.notifier = notifier
        self.pause = pause
        self.delay_s = delay_s
        self.clock = clock
        self._cache: tuple[float, list[Threshold]] = (0.0, [])
        self._q: queue.Queue[tuple[float, list[tuple[str, str | None]]] | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None

    def thresholds(self) -> list[Threshold]:
        """The stored thresholds, re-read at most once a second."""
        expires, cached = self._cache
        if time.monotonic() < expires:
            return cached
        try:
            cached = list_thresholds(self.ledger)
        except Exception as e:  # keep the last known thresholds while the database is unreachable
            log.error("threshold_read_failed error=%s", type(e).__name__)
        self._cache = (time.monotonic() + CACHE_S, cached)
        return cached

    def invalidate(self) -> None:
        self._cache = (0.0, [])

    # ------------------------------------------------------------------ feeding
    def on_events(self, events: list[UsageEvent]) -> None:
        """Called by the fan-out's dispatcher thread: queue the agents to check (never blocks)."""
        if not self.thresholds():
            return
        pairs = sorted({(e.agent, e.session) for e in events if e.agent})
        if pairs:
            try:
                self._q.put_nowait((time.monotonic() + self.delay_s, pairs))
            except queue.Full:
                log.warning("threshold_queue_full dropped=%d", len(pairs))

    def start(self) -> ThresholdWatch:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmbudget-thresholds", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=2)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            due, pairs = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for agent, session in pairs:
                try:
                    self.check(agent, session)
                except Exception:
                    log.exception("threshold_check_failed agent=%s", agent)

    # ------------------------------------------------------------------ checking
    def check(self, agent: str, session: str | None) -> list[Notice]:
        """Compare the agent's spend with its thresholds; notify (and pause) once per session or day."""
        rules = applicable(self.thresholds(), agent)
        out: list[Notice] = []
        now = self.clock()
        if "session" in rules and session:
            t = rules["session"]
            spent = agent_session_totals(self.ledger, [(session, agent)])[(session, agent)][2]
            if spent >= t.limit_nano:
                n = self._fire(t, agent, spent, f"session|{session}", f"in session {session}")
                if n is not None:
                    out.append(n)
        if "agent" in rules:
            t = rules["agent"]
            local = now.astimezone(self.tz)
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            rows = self.ledger.costs(
                since=start, until=start + timedelta(days=1), tz=self.tz, filters={"agent": agent}
            )
            spent = sum(r.cost_nano for r in rows)
            if spent >= t.limit_nano:
                n = self._fire(t, agent, spent, f"day|{start.date().isoformat()}", "today")
                if n is not None:
                    out.append(n)
        return out

    def _fire(self, t: Threshold, agent: str, spent: int, window: str, when: str) -> Notice | None:
        key = f"{t.scope}|{agent}|{window}|{t.limit_nano}"
        if self.ledger.get_state(FIRED_NS, key) is not None:
            return None
        self.ledger.set_state(FIRED_NS, key, {"at": self.clock().isoformat()})
        spent_usd, limit_usd = from_nano(spent), from_nano(t.limit_nano)
        what = "session" if t.scope == "session" else "daily"
        action = "; the agent is paused (auto-pause)" if t.auto_pause else ""
        message = (
            f"Agent '{agent}' spent {format_usd(spent_usd, 4)} {when}, reaching its {what} alert threshold "
            f"of {format_usd(limit_usd, 4)}{action}."
        )
        notice = Notice(
            kind="threshold_crossed",
            level="critical" if t.auto_pause else "warning",
            scope=f"agent {agent}",
            spent_usd=spent_usd,
            limit_usd=limit_usd,
            message=message,
        )
        if self.notifier is not None:
            self.notifier.notify(notice)
        if t.auto_pause and self.pause is not None:
            self.pause(agent, f"{what} alert threshold of {format_usd(limit_usd, 4)} reached {when}")
        return notice
