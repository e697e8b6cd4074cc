"""Paused agents: their calls get 429 until resumed. The list lives in the ledger's state, read at most once a second.

Mixed into `BudgetEnforcer`; `set_pause` is the one write of a pause (or of its end).
"""

from __future__ import annotations

import logging
import time
from typing import TypedDict, cast

from ..admission import Admission, CallInfo
from ..alerts import Notice, Notifier
from ..events import utcnow
from ..store.base import Ledger
from .counters import CounterStore

log = logging.getLogger("llmbudget.budget")

PAUSE_NS = "agent_pause"


class PauseRecord(TypedDict, total=False):
    """A pause as the ledger's state holds it (JSON, namespace `agent_pause`)."""

    agent: str
    paused_at: str
    reason: str
    budget: str | None
    by: str


class Pauses:
    """Part of `BudgetEnforcer`: the pause list, pausing and resuming agents, a paused agent's refusal."""

    # set by BudgetEnforcer
    state: Ledger | None
    notifier: Notifier | None
    store: CounterStore
    _pauses: tuple[float, dict[str, PauseRecord]]
    _memory_pauses: dict[str, PauseRecord]

    def pause_refusal(self, call: CallInfo, pauses: dict[str, PauseRecord] | None = None) -> Admission | None:
        """The refusal of a call from a paused agent, None when its agent is not paused."""
        if not call.agent:
            return None
        paused = (self.paused() if pauses is None else pauses).get(call.agent)
        if paused is None:
            return None
        budget = paused.get("budget")
        return Admission(
            allowed=False,
            status=429,
            message=self._pause_message(call.agent, paused),
            notice=f"Agent {call.agent!r} is paused",
            budgets=(budget,) if budget else (),
        )

    def cached_pauses(self) -> dict[str, PauseRecord] | None:
        """The paused agents if read within the last second (no I/O), else None."""
        if self.state is None:
            return dict(self._memory_pauses)
        expires, cached = self._pauses
        return cached if time.monotonic() < expires else None

    def paused(self) -> dict[str, PauseRecord]:
        """Paused agents (cached for one second: a pause from another process shows within a second)."""
        if self.state is None:
            return dict(self._memory_pauses)
        expires, cached = self._pauses
        if time.monotonic() < expires:
            return cached
        try:
            cached = cast(dict[str, PauseRecord], self.state.list_state(PAUSE_NS))
        except Exception as e:  # the ledger briefly unavailable: keep the last known pauses
            log.error("budget pause_read_failed error=%s", type(e).__name__)
        self._pauses = (time.monotonic() + 1.0, cached)
        return cached

    def pause(self, agent: str, *, reason: str, budget: str | None = None, by: str = "budget") -> None:
        """Pause an agent: its calls get 429 until resumed. Stored in the ledger, survives restarts."""
        value: PauseRecord = {
            "agent": agent,
            "paused_at": utcnow().isoformat(),
            "reason": reason,
            "budget": budget,
            "by": by,
        }
        set_pause(self.state, agent, value, memory=self._memory_pauses)
        self._pauses = (0.0, {})
        if self.notifier is not None and (
            budget is None or self.store.claim_once(f"pause|{agent}|{budget}|{reason}")
        ):
            self.notifier.notify(
                Notice(
                    kind="agent_paused",
                    level="critical" if by == "budget" else "info",
                    budget=budget,
                    scope=f"agent {agent}",
                    message=f"Agent '{agent}' paused: {reason}. Resume with "
                    f"`llmbudget agents resume {agent}`.",
                )
            )

    def resume(self, agent: str) -> bool:
        """Resume a paused agent and post an `agent_resumed` notice; False when it was not paused."""
        was = set_pause(self.state, agent, None, memory=self._memory_pauses)
        self._pauses = (0.0, {})
        if was and self.notifier is not None:
            self.notifier.notify(
                Notice(
                    kind="agent_resumed",
                    level="info",
                    scope=f"agent {agent}",
                    message=f"Agent '{agent}' resumed.",
                )
            )
        return was

    @staticmethod
    def _pause_message(agent: str, info: PauseRecord) -> str:
        why = f" by budget '{info['budget']}'" if info.get("budget") else ""
        reason = f" ({info['reason']})" if info.get("reason") else ""
        return (
            f"Agent '{agent}' is paused{why}{reason}. Resume it with `llmbudget agents resume {agent}` "
            f"or POST /api/agents/{agent}/resume."
        )


def set_pause(
    state: Ledger | None,
    agent: str,
    value: PauseRecord | None,
    *,
    memory: dict[str, PauseRecord] | None = None,
) -> bool:
    """Store (or clear with None) an agent's pause; returns whether it was paused before."""
    if state is None:
        mem = memory if memory is not None else {}
        was = agent in mem
        if value is None:
            mem.pop(agent, None)
        else:
            mem[agent] = value
        return was
    was = state.get_state(PAUSE_NS, agent) is not None
    state.set_state(PAUSE_NS, agent, None if value is None else dict(value))
    return was
