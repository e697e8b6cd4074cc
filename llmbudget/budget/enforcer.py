"""Budget enforcement: reserve a call's worst case before it is sent, settle to the real cost after.

`BudgetEnforcer` is synchronous (the SDK wrappers call it directly); `BudgetGate` adapts it to
the proxy's async `Gate` protocol (`llmbudget.admission`) by running store calls in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..admission import Admission, CallInfo
from ..alerts import Notice, Notifier
from ..events import UsageEvent, new_id, utcnow
from ..money import format_usd, from_nano, to_nano
from .estimate import PriceFn, max_output_tokens
from .rules import Budget
from .seed import SeedSpec, spec_for
from .store import Charge, CounterStore, Reconciled, Refusal
from .windows import Window, format_reset

log = logging.getLogger("llmbudget.budget")

PAUSE_NS = "agent_pause"


def _amount_text(b: Budget, value: int) -> str:
    return format_usd(from_nano(value), 4) if b.unit == "usd" else f"{value:,} tokens"


@dataclass(slots=True)
class _Booked:
    budget: Budget
    charge: Charge
    window: Window
    prefix: str
    value: str


@dataclass(slots=True)
class _Pending:
    booked: list[_Booked]
    call: CallInfo


class BudgetEnforcer:
    """Checks, books and settles calls against every budget that applies."""

    def __init__(
        self,
        budgets: Sequence[Budget],
        store: CounterStore,
        *,
        tz: ZoneInfo,
        price: PriceFn,
        fallback: str | None = None,
        fallback_model: str | None = None,
        ttl_s: float = 3600,
        default_max_output: int = 32768,
        input_factor: float = 1.0,
        notifier: Notifier | None = None,
        state: Any | None = None,
        clock: Callable[[], datetime] = utcnow,
        on_error: str = "closed",
    ) -> None:
        self.budgets = list(budgets)
        self.by_name = {b.name: b for b in self.budgets}
        self.store = store
        self.tz = tz
        self.price = price
        self.fallback = fallback
        self.fallback_model = fallback_model
        self.ttl_s = ttl_s
        self.default_max_output = default_max_output
        self.input_factor = input_factor
        self.notifier = notifier
        self.state = state
        self.clock = clock
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._pauses: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._memory_pauses: dict[str, dict[str, Any]] = {}
        self._unpriced_logged: set[str] = set()
        #: counters known to exist (created, seeded from the ledger) in the store
        self._seeded: set[str] = set()
        #: closed: a budget that cannot be checked refuses the call (503); open: lets it through
        self.on_error = on_error
        #: sessions this process booked recently (their session-period counters are reconciled)
        self._sessions: dict[str, float] = {}
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None
        #: the last periodic reconciliation: {counter: Reconciled}
        self.last_reconcile: dict[str, Reconciled] = {}
        self._reconciled_at: datetime | None = None

    # ------------------------------------------------------------------ admission
    def worst_case(self, call: CallInfo) -> tuple[int, int, Decimal | None]:
        """(input tokens, output tokens, cost USD or None when unpriced) reserved for a call.

        Output is every output the request can produce: the limit (or the model's maximum) times
        its choices (`n`, `best_of`, `candidateCount`).
        """
        tin = max(0, math.ceil(int(call.est_input_tokens) * self.input_factor))
        tout = call.max_output_tokens
        if tout is None or tout <= 0:
            tout = max_output_tokens(call.model, call.provider, tin, self.default_max_output)
        tout = int(tout) * max(1, int(call.choices))
        if call.service_tier:
            # a dearer tier asked for is reserved at its rates (never under the standard ones)
            cost = self.price(call.model, call.provider, tin, int(tout), self.clock(), call.service_tier)
        else:
            cost = self.price(call.model, call.provider, tin, int(tout), self.clock())
        return tin, int(tout), cost

    def _charges(self, call: CallInfo, now: datetime, tokens: int, cost_nano: int | None) -> list[_Booked]:
        out: list[_Booked] = []
        for b in self.budgets:
            value = b.scope_value(call)
            if value is None:
                continue
            w = b.window(call, now, self.tz)
            if w is None:
                continue
            amount = (cost_nano or 0) if b.unit == "usd" else tokens
            prefix = b.counter_prefix(value)
            charge = Charge(
                b.name,
                prefix + w.key,
                tuple(prefix + k for k in w.read_keys),
                b.limit if b.hard else None,
                amount,
                b.unit,
            )
            out.append(_Booked(b, charge, w, prefix, value))
        return out

    def _seeds(self, booked: list[_Booked], call: CallInfo) -> dict[str, SeedSpec] | None:
        """Seeds of the counters this process has not seen yet (each is created seeded from the ledger)."""
        out: dict[str, SeedSpec] | None = None
        for x in booked:
            for wkey, key in zip(x.window.read_keys, x.charge.read_keys, strict=True):
                if key not in self._seeded:
                    if out is None:
                        out = {}
                    out[key] = spec_for(x.budget, x.value, x.window, wkey, call.session)
        return out

    def _remember_seeded(self, seeds: dict[str, SeedSpec] | None) -> None:
        if seeds:
            with self._lock:
                if len(self._seeded) > 100_000:  # keys of windows long gone
                    self._seeded.clear()
                self._seeded.update(seeds)

    def pause_refusal(
        self, call: CallInfo, pauses: dict[str, dict[str, Any]] | None = None
    ) -> Admission | None:
        """The refusal of a call from a paused agent, None when its agent is not paused."""
        if not call.agent:
            return None
        paused = (self.paused() if pauses is None else pauses).get(call.agent)
        if paused is None:
            return None
        return Admission(
            allowed=False,
            status=429,
            message=self._pause_message(call.agent, paused),
            notice=f"Agent {call.agent!r} is paused",
            budgets=tuple([paused["budget"]] if paused.get("budget") else []),
        )

    def admit(self, call: CallInfo) -> Admission:
        """Reserve the call's worst case against every applicable budget, atomically; or refuse / divert.

        When the counters cannot be read the call is refused with `BudgetUnavailable` (a 503 at the
        proxy), or let through unchecked with `budgets.on_error: open`.
        """
        refused = self.pause_refusal(call)
        if refused is not None:
            return refused
        if call.local or call.backend == self.fallback or not self.budgets:
            return Admission(allowed=True)
        try:
            return self._admit(call)
        except Exception as e:
            if self.on_error == "open":
                log.error("budget check_failed on_error=open error=%s: %s", type(e).__name__, e)
                return Admission(allowed=True)
            raise _unavailable(e) from e

    def _admit(self, call: CallInfo) -> Admission:
        now = self.clock()
        tin, tout, cost = self.worst_case(call)
        if cost is None and call.model not in self._unpriced_logged:
            self._unpriced_logged.add(call.model)
            log.warning(
                "budget unpriced_model model=%s backend=%s: not counted against USD budgets until priced",
                call.model,
                call.backend,
            )
        booked = self._charges(call, now, tin + tout, None if cost is None else to_nano(cost))
        if not booked:
            return Admission(allowed=True)
        rid = self.store.reservation_id(new_id())  # carries this process's owner id
        seeds = self._seeds(booked, call)
        refusal = self.store.reserve(rid, [x.charge for x in booked], self.ttl_s, seeds)
        self._remember_seeded(seeds)
        if refusal is None:
            with self._lock:
                self._pending[rid] = _Pending(booked, call)
                if call.session:
                    self._sessions[call.session] = time.monotonic()
            return Admission(allowed=True, reservation_id=rid, budgets=tuple(x.budget.name for x in booked))
        return self._refuse(call, booked, refusal, now)

    def _refuse(self, call: CallInfo, booked: list[_Booked], r: Refusal, now: datetime) -> Admission:
        hit = next(x for x in booked if x.budget.name == r.budget)
        b, w = hit.budget, hit.window
        reset = format_reset(w.reset, self.tz)
        retry = max(1, math.ceil((w.reset - now).total_seconds())) if w.reset is not None else None
        usage = (
            f"budget '{b.name}' has spent {_amount_text(b, r.spent)} of its {b.describe_limit()} limit"
            + (f" ({_amount_text(b, r.reserved)} reserved by calls in flight)" if r.reserved else "")
            + f"; this call needs up to {_amount_text(b, r.amount)}"
        )
        self._announce_limit(hit, r, reset)
        if b.action == "fallback" and self.fallback:
            notice = f"Cloud budget exhausted, operating local-only until {reset}"
            log.info("budget fallback budget=%s backend=%s to=%s", b.name, call.backend, self.fallback)
            return Admission(
                allowed=True,
                fallback_backend=self.fallback,
                fallback_model=self.fallback_model,
                notice=notice,
                message=f"{notice}: {usage}.",
                budgets=(b.name,),
            )
        if b.action == "pause" and call.agent:
            self.pause(call.agent, reason=f"{usage} (window until {reset})", budget=b.name)
            msg = self._pause_message(call.agent, self.paused().get(call.agent) or {"budget": b.name})
            return Admission(
                allowed=False,
                status=429,
                message=msg,
                notice=f"Agent {call.agent!r} is paused",
                budgets=(b.name,),
            )
        # the sentence DESIGN.md section 5 names; true without a fallback too: local backends are
        # never counted, so they keep serving while cloud calls are refused
        notice = f"Cloud budget exhausted, operating local-only until {reset}"
        hint = (
            "" if self.fallback else "; set budgets.fallback to have refused calls served by a local backend"
        )
        when = "when the session ends" if w.reset is None else f"at {reset}"
        msg = f"{notice}: {usage}. Cloud calls resume by themselves {when}{hint}."
        log.info("budget refused budget=%s backend=%s agent=%s", b.name, call.backend, call.agent)
        return Admission(
            allowed=False, status=429, message=msg, notice=notice, retry_after_s=retry, budgets=(b.name,)
        )

    # ------------------------------------------------------------------ settle / release
    def settle(self, admission: Admission, event: UsageEvent) -> None:
        """Replace the reservation by the real cost (tokens) of the recorded event."""
        if not admission.reservation_id:
            return
        with self._lock:
            pending = self._pending.pop(admission.reservation_id, None)
        if pending is None:
            return
        actual: list[tuple[str, int]] = []
        shown: list[tuple[str, int]] = []
        local = event.price_status == "local"  # the ledger never counts local calls against budgets
        for x in pending.booked:
            if x.budget.unit == "usd":
                # an answer we cannot price keeps its reserved worst case: never under-count
                amount = event.cost_nano if event.cost_nano is not None else x.charge.amount
                ledger = 0 if local or event.cost_nano is None else event.cost_nano
            else:
                amount = event.input_tokens + event.output_tokens
                ledger = 0 if local else amount
            actual.append((x.charge.key, amount))
            shown.append((x.charge.key, ledger))
        if self.store.settle(admission.reservation_id, actual, event.id, shown):
            # the ledger already had the event (its writer was faster): count it once, from the ledger
            self.store.reconcile(self._specs(pending.booked, pending.call.session))
        self._check_warnings(pending.booked)

    @staticmethod
    def _specs(booked: list[_Booked], session: str | None) -> dict[str, SeedSpec]:
        return {
            key: spec_for(x.budget, x.value, x.window, wkey, session)
            for x in booked
            for wkey, key in zip(x.window.read_keys, x.charge.read_keys, strict=True)
        }

    # ------------------------------------------------------------------ reconciliation
    def reconcile(self) -> dict[str, Reconciled]:
        """Reconcile every counter of the current windows with the ledger (imports, reprices, other writers)."""
        from .status import live_specs

        cutoff = time.monotonic() - 24 * 3600
        with self._lock:
            for s in [s for s, t in self._sessions.items() if t < cutoff]:
                del self._sessions[s]
            sessions = set(self._sessions)
        specs = live_specs(self.budgets, self.store, self.tz, self.clock(), sessions=sessions)
        result = self.store.reconcile(specs)
        drifted = {k: r.drift for k, r in result.items() if r.drift}
        if drifted:
            log.info("budget reconciled counters=%d drifted=%s", len(result), drifted)
        self.last_reconcile = result
        self._reconciled_at = utcnow()
        return result

    def drift(self) -> dict[str, Any] | None:
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

    def release(self, admission: Admission) -> None:
        """Drop the reservation of a call that spent nothing."""
        if not admission.reservation_id:
            return
        with self._lock:
            pending = self._pending.pop(admission.reservation_id, None)
        if pending is not None:
            self.store.release(admission.reservation_id)

    # ------------------------------------------------------------------ warnings
    def _check_warnings(self, booked: list[_Booked]) -> None:
        if self.notifier is None:
            return
        keys = sorted({k for x in booked for k in x.charge.read_keys})
        totals = self.store.totals(keys)
        for x in booked:
            b = x.budget
            if b.limit <= 0:
                continue
            spent = sum(totals.get(k, (0, 0))[0] for k in x.charge.read_keys)
            for t in (*b.warn, 1.0):
                if spent < t * b.limit:
                    continue
                if t >= 1.0:
                    self._announce_limit(
                        x, Refusal(b.name, spent, 0, b.limit, 0), format_reset(x.window.reset, self.tz)
                    )
                    continue
                if not self.store.claim_once(f"warn|{x.charge.key}|{t}"):
                    continue
                scope = self._scope_text(x)
                reset = format_reset(x.window.reset, self.tz)
                self.notifier.notify(
                    Notice(
                        kind="budget_warning",
                        level="warning",
                        budget=b.name,
                        scope=scope,
                        spent_usd=from_nano(spent) if b.unit == "usd" else None,
                        limit_usd=from_nano(b.limit) if b.unit == "usd" else None,
                        threshold=t,
                        reset=reset,
                        message=(
                            f"Budget '{b.name}'{' for ' + scope if scope else ''} is at {spent / b.limit:.0%}: "
                            f"{_amount_text(b, spent)} of {b.describe_limit()} (warning at {t:.0%}); "
                            f"resets {reset}."
                        ),
                    )
                )

    def _announce_limit(self, x: _Booked, r: Refusal, reset: str) -> None:
        if self.notifier is None or not self.store.claim_once(f"limit|{x.charge.key}"):
            return
        b = x.budget
        scope = self._scope_text(x)
        what = {
            "alert": "calls continue (action: alert)",
            "fallback": f"calls go to {self.fallback}" if self.fallback else "calls are refused",
            "block": "calls are refused",
            "pause": "the agent is paused",
        }[b.action]
        if b.action == "fallback" and not self.fallback:
            what = "calls are refused"
        self.notifier.notify(
            Notice(
                kind="budget_exhausted",
                level="critical",
                budget=b.name,
                scope=scope,
                spent_usd=from_nano(r.spent) if b.unit == "usd" else None,
                limit_usd=from_nano(b.limit) if b.unit == "usd" else None,
                threshold=1.0,
                reset=reset,
                message=(
                    f"Budget '{b.name}'{' for ' + scope if scope else ''} reached its limit: "
                    f"{_amount_text(b, r.spent)} spent"
                    + (
                        f" and {_amount_text(b, r.reserved)} reserved by calls in flight"
                        if r.reserved
                        else ""
                    )
                    + f" of {b.describe_limit()}; {what} until {reset}."
                ),
            )
        )

    @staticmethod
    def _scope_text(x: _Booked) -> str | None:
        value = x.prefix.split("|")[1]
        return None if x.budget.scope == "global" else f"{x.budget.scope} {value}"

    # ------------------------------------------------------------------ pauses
    def cached_pauses(self) -> dict[str, dict[str, Any]] | None:
        """The paused agents if read within the last second (no I/O), else None."""
        if self.state is None:
            return dict(self._memory_pauses)
        expires, cached = self._pauses
        return cached if time.monotonic() < expires else None

    def paused(self) -> dict[str, dict[str, Any]]:
        """Paused agents (cached for one second: a pause from another process shows within a second)."""
        if self.state is None:
            return dict(self._memory_pauses)
        expires, cached = self._pauses
        if time.monotonic() < expires:
            return cached
        try:
            cached = self.state.list_state(PAUSE_NS)
        except Exception as e:  # the ledger briefly unavailable: keep the last known pauses
            log.error("budget pause_read_failed error=%s", type(e).__name__)
        self._pauses = (time.monotonic() + 1.0, cached)
        return cached

    def pause(self, agent: str, *, reason: str, budget: str | None = None, by: str = "budget") -> None:
        """Pause an agent: its calls get 429 until resumed. Stored in the ledger, survives restarts."""
        value = {
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
    def _pause_message(agent: str, info: dict[str, Any]) -> str:
        why = f" by budget '{info['budget']}'" if info.get("budget") else ""
        reason = f" ({info['reason']})" if info.get("reason") else ""
        return (
            f"Agent '{agent}' is paused{why}{reason}. Resume it with `llmbudget agents resume {agent}` "
            f"or POST /api/agents/{agent}/resume."
        )

    def close(self) -> None:
        self._stop.set()
        if self._reconciler is not None:
            self._reconciler.join(timeout=10)
        self.store.close()
        if self.notifier is not None:
            self.notifier.close()


def _unavailable(e: Exception) -> Exception:
    from ..errors import BudgetUnavailable, LLMBudgetError

    cause = str(e) if isinstance(e, LLMBudgetError) else f"{type(e).__name__}: {e}"
    return BudgetUnavailable(
        f"llmbudget cannot check the budget, so the call is refused: {cause}. "
        "Set budgets.on_error: open to let calls through unchecked while the counters are unavailable."
    )


def set_pause(
    state: Any | None,
    agent: str,
    value: dict[str, Any] | None,
    *,
    memory: dict[str, dict[str, Any]] | None = None,
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
    state.set_state(PAUSE_NS, agent, value)
    return was


_ALLOWED = Admission(allowed=True)


class BudgetGate:
    """The proxy's `Gate`: the enforcer's blocking store calls run in a worker thread."""

    def __init__(self, enforcer: BudgetEnforcer) -> None:
        self.enforcer = enforcer

    async def admit(self, call: CallInfo) -> Admission:
        enf = self.enforcer
        if not enf.budgets:  # pauses only: no thread hop while the pause list is fresh
            if not call.agent:
                return _ALLOWED
            pauses = enf.cached_pauses()
            if pauses is None:
                pauses = await asyncio.to_thread(enf.paused)
            return enf.pause_refusal(call, pauses) or _ALLOWED
        return await asyncio.to_thread(enf.admit, call)

    async def settle(self, admission: Admission, event: UsageEvent) -> None:
        if admission.reservation_id:
            await asyncio.to_thread(self.enforcer.settle, admission, event)

    async def release(self, admission: Admission) -> None:
        if admission.reservation_id:
            await asyncio.to_thread(self.enforcer.release, admission)

    # the SDK wrappers call these directly (no event loop)
    def admit_sync(self, call: CallInfo) -> Admission:
        return self.enforcer.admit(call)

    def settle_sync(self, admission: Admission, event: UsageEvent) -> None:
        self.enforcer.settle(admission, event)

    def release_sync(self, admission: Admission) -> None:
        self.enforcer.release(admission)
