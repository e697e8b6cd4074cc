"""Budget enforcement: reserve a call's worst case before it is sent, settle to the real cost after.

`BudgetEnforcer` is synchronous. `BudgetGate` is the one gate over it (`Gate` in
`llmbudget.admission`), with two faces: the async one (the proxy, async SDK clients) admits from
the lease on the caller's event loop and runs store steps in a worker thread; the sync one (sync
SDK clients) calls the enforcer in the caller's thread, with no event loop.
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
from ..errors import BudgetUnavailable, LLMBudgetError
from ..events import UsageEvent, new_id, utcnow
from ..money import format_usd, from_nano, to_nano
from .counters import Charge, CounterStore, LeaseResult, Reconciled, Refusal, Spend
from .estimate import PriceFn, max_output_tokens
from .lease import LeaseBook
from .rules import Budget
from .seed import SeedSpec, spec_for
from .status import live_specs
from .windows import Window, format_reset

log = logging.getLogger("llmbudget.budget")

PAUSE_NS = "agent_pause"
#: Retry-After of a call refused only because calls in flight hold the rest of the budget
INFLIGHT_RETRY_S = 2


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
    charges: list[Charge]


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
        self._store = store
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
        #: this process's lease of budget: calls far from the limit are admitted without I/O
        self.book = LeaseBook(
            store, store.reservation_id("lease-" + new_id()), ttl_s=ttl_s, on_flush=self._flushed
        )
        #: settlements written in batches by a background thread (serve), else at once (SDK wrappers)
        self.batch = False
        #: called (from any thread) when settlements free budget: waiting calls may try again
        self.on_freed: Callable[[], None] | None = None

    @property
    def store(self) -> CounterStore:
        """The shared counters (the lease writes to the same)."""
        return self._store

    @store.setter
    def store(self, store: CounterStore) -> None:
        self._store = store
        if hasattr(self, "book"):
            self.book.store = store

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
        charges = [x.charge for x in booked]
        seeds = self._seeds(booked, call)
        if seeds is None and self.book.take(charges):
            refusal = None
        else:
            refusal = self.book.grow(charges, seeds)
            self._remember_seeded(seeds)
        if refusal is None:
            return self._admitted(call, booked, charges)
        return self._refuse(call, booked, refusal, now)

    def _admitted(self, call: CallInfo, booked: list[_Booked], charges: list[Charge]) -> Admission:
        rid = self.book.rid + "#" + new_id()
        with self._lock:
            self._pending[rid] = _Pending(booked, call, charges)
            if call.session:
                self._sessions[call.session] = time.monotonic()
        return Admission(allowed=True, reservation_id=rid, budgets=tuple(x.budget.name for x in booked))

    def admit_local(self, call: CallInfo) -> Admission | None:
        """`admit` without any I/O when the lease covers the call; None when the store must be asked."""
        if call.agent:  # only an agent can be paused: a call without one needs no pause list
            pauses = self.cached_pauses()
            if pauses is None:
                return None
            refused = self.pause_refusal(call, pauses)
            if refused is not None:
                return refused
        if call.local or call.backend == self.fallback or not self.budgets:
            return _ALLOWED
        try:
            tin, tout, cost = self.worst_case(call)
            booked = self._charges(call, self.clock(), tin + tout, None if cost is None else to_nano(cost))
        except Exception:
            return None
        if not booked:
            return _ALLOWED
        if cost is None and call.model not in self._unpriced_logged:
            return None  # logged once by admit()
        charges = [x.charge for x in booked]
        if self._seeds(booked, call) is not None or not self.book.take(charges):
            return None
        return self._admitted(call, booked, charges)

    def _refuse(self, call: CallInfo, booked: list[_Booked], r: Refusal, now: datetime) -> Admission:
        hit = next(x for x in booked if x.budget.name == r.budget)
        b, w = hit.budget, hit.window
        reset = format_reset(w.reset, self.tz)
        if r.spent + r.amount <= r.limit:
            # spent money leaves room: calls in flight hold the rest until they settle
            return self._refuse_inflight(call, hit, r)
        retry = max(1, math.ceil((w.reset - now).total_seconds())) if w.reset is not None else None
        usage = (
            f"budget '{b.name}' has spent {_amount_text(b, r.spent)} of its {b.describe_limit()} limit"
            + (f" ({_amount_text(b, r.reserved)} reserved by calls in flight)" if r.reserved else "")
            + f"; this call needs up to {_amount_text(b, r.amount)}"
        )
        # spent money alone leaves no room for this call: the budget is exhausted for it
        self._check_warnings([hit], {k: (r.spent, 0) for k in hit.charge.read_keys[:1]}, exhausted=True)
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
        # the notice the README documents; true without a fallback too: local backends are
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

    def _refuse_inflight(self, call: CallInfo, hit: _Booked, r: Refusal) -> Admission:
        b = hit.budget
        try:
            n = self.store.inflight(hit.charge.read_keys)
        except Exception:  # the count is for the message only
            n = 0
        held = f"{_amount_text(b, r.reserved)} reserved by {n} call{'' if n == 1 else 's'} in flight"
        if not n:
            held = f"{_amount_text(b, r.reserved)} reserved by calls in flight"
        msg = (
            f"Budget '{b.name}' has spent {_amount_text(b, r.spent)} of its {b.describe_limit()} limit and "
            f"{held}; this call needs up to {_amount_text(b, r.amount)}. The reservations settle to the "
            f"calls' real cost as they finish: retry in {INFLIGHT_RETRY_S} seconds."
        )
        log.info("budget refused_inflight budget=%s backend=%s agent=%s", b.name, call.backend, call.agent)
        return Admission(
            allowed=False,
            status=429,
            message=msg,
            notice=f"Budget '{b.name}' is held by calls in flight",
            retry_after_s=INFLIGHT_RETRY_S,
            budgets=(b.name,),
            held_by_inflight=True,
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
        spends: list[Spend] = []
        local = event.price_status == "local"  # the ledger never counts local calls against budgets
        for x in pending.booked:
            if x.budget.unit == "usd":
                # an answer we cannot price keeps its reserved worst case: never under-count
                amount = event.cost_nano if event.cost_nano is not None else x.charge.amount
                ledger = 0 if local or event.cost_nano is None else event.cost_nano
            else:
                amount = event.input_tokens + event.output_tokens
                ledger = 0 if local else amount
            spends.append(Spend(event.id, x.charge.key, int(amount), int(ledger)))
        self.book.settled(pending.charges, spends, pending)
        if self.batch:
            self.book.start()  # written in the next batch (within FLUSH_S); the lease covers the call until then
        else:
            self.book.flush()
        if self.on_freed is not None:
            self.on_freed()

    def flush(self) -> None:
        """Write settled calls to the shared counters now (they are otherwise within milliseconds)."""
        self.book.flush()

    def give_back(self) -> None:
        """Write settled calls and return the lease's unused part now (otherwise 2 s after the last call)."""
        self.book.flush(final=True)

    def _flushed(self, result: LeaseResult, notes: list[Any]) -> None:
        """After a batch of settlements reached the counters: reconcile if needed, then warn and alert."""
        pendings: list[_Pending] = [p for p in notes if isinstance(p, _Pending)]
        totals = dict(result.totals)
        if result.ledgered:
            # the ledger already had some events (its writer was faster): count them once, from the ledger
            specs: dict[str, SeedSpec] = {}
            for p in pendings:
                specs.update(self._specs(p.booked, p.call.session))
            try:
                for k, rec in self.store.reconcile(specs).items():
                    totals[k] = (rec.after, totals.get(k, (0, 0))[1])
            except Exception as e:
                log.error("budget reconcile_failed error=%s: %s", type(e).__name__, e)
        seen: set[str] = set()
        booked: list[_Booked] = []
        for p in pendings:
            for x in p.booked:
                if x.charge.key not in seen:
                    seen.add(x.charge.key)
                    booked.append(x)
        if booked:
            try:
                self._check_warnings(booked, totals)
            except Exception as e:
                log.error("budget warning_check_failed error=%s: %s", type(e).__name__, e)
        if self.on_freed is not None:
            self.on_freed()

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
        cutoff = time.monotonic() - 24 * 3600
        with self._lock:
            for s in [s for s, t in self._sessions.items() if t < cutoff]:
                del self._sessions[s]
            sessions = set(self._sessions)
        specs = live_specs(self.budgets, self.store, self.tz, self.clock(), sessions=sessions)
        result = self.store.reconcile(specs)
        # the counters may have moved (imports, reprices, another replica's reconciliation): the
        # lease's unused part goes back, so the next calls are checked against the new figures
        self.book.flush(final=True)
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
            self.book.released(pending.charges)
            if self.on_freed is not None:
                self.on_freed()

    # ------------------------------------------------------------------ warnings
    def _check_warnings(
        self, booked: list[_Booked], totals: dict[str, tuple[int, int]], *, exhausted: bool = False
    ) -> None:
        """Warnings for thresholds that spent money crossed, in order, then the limit alert.

        The limit alert fires when spent reaches the limit, or (`exhausted`) when spent money alone
        refused a call; never from reservations of calls in flight.
        """
        if self.notifier is None:
            return
        missing = sorted({k for x in booked for k in x.charge.read_keys if k not in totals})
        if missing and not exhausted:  # buckets of a rolling window this batch did not touch
            totals = {**totals, **self.store.totals(missing)}
        for x in booked:
            b = x.budget
            if b.limit <= 0:
                continue
            spent = sum(totals.get(k, (0, 0))[0] for k in x.charge.read_keys)
            for t in (*b.warn, 1.0):
                if t >= 1.0:
                    if spent >= b.limit or exhausted:
                        self._announce_limit(
                            x, Refusal(b.name, spent, 0, b.limit, 0), format_reset(x.window.reset, self.tz)
                        )
                    continue
                if spent < t * b.limit:
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
        self.book.close()  # pending settlements written, the lease given back
        self.store.close()
        if self.notifier is not None:
            self.notifier.close()


def _unavailable(e: Exception) -> Exception:
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
    """The gate over one enforcer, with an async face and a sync face that answer alike.

    Async (`admit`, `settle`, `release`): the proxy and async SDK clients, on the caller's event
    loop; admission from the lease without I/O, store steps in a worker thread. Sync
    (`admit_sync`, `settle_sync`, `release_sync`): sync SDK clients, in the caller's thread, no
    event loop. A call refused only because calls in flight hold the rest of the budget waits up
    to `wait_s` for them to settle (woken by each settlement here, polling for other processes'),
    then is admitted or refused with a short Retry-After.
    """

    def __init__(self, enforcer: BudgetEnforcer, *, wait_s: float = 3.0) -> None:
        self.enforcer = enforcer
        self.wait_s = wait_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._freed: asyncio.Condition | None = None
        self._retry: asyncio.Lock | None = None
        #: the sync face's waiters: woken by settlements, one asks the store at a time
        self._freed_sync = threading.Condition()
        self._retry_sync = threading.Lock()
        self._sync_waiters = 0
        enforcer.on_freed = self._on_freed

    def _on_freed(self) -> None:
        if self._sync_waiters:  # read without the lock: a missed wake-up is caught by the poll
            with self._freed_sync:
                self._freed_sync.notify(2)
        loop, cond = self._loop, self._freed
        if loop is None or cond is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._notify(2))
        else:
            loop.call_soon_threadsafe(lambda: loop.create_task(self._notify(2)))

    async def _notify(self, n: int) -> None:
        if self._freed is not None:
            async with self._freed:
                self._freed.notify(n)

    def clear_without_budgets(self, agent: str | None) -> bool:
        """True when a call may go without asking `admit`: no budget is configured and its agent
        (if any) is not paused by the fresh pause list. The proxy's hot path, with no CallInfo built."""
        enf = self.enforcer
        if enf.budgets:
            return False
        if not agent:
            return True
        pauses = enf.cached_pauses()
        return pauses is not None and agent not in pauses

    # ------------------------------------------------------------------ the async face
    async def admit(self, call: CallInfo) -> Admission:
        enf = self.enforcer
        if not enf.budgets:  # pauses only: no thread hop while the pause list is fresh
            if not call.agent:
                return _ALLOWED
            pauses = enf.cached_pauses()
            if pauses is None:
                pauses = await asyncio.to_thread(enf.paused)
            return enf.pause_refusal(call, pauses) or _ALLOWED
        adm = enf.admit_local(call)
        if adm is None:
            adm = await asyncio.to_thread(enf.admit, call)
        if adm.held_by_inflight and self.wait_s > 0:
            adm = await self._wait(call, adm)
        return adm

    async def _wait(self, call: CallInfo, adm: Admission) -> Admission:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._freed is None or self._retry is None:
            self._loop, self._freed, self._retry = loop, asyncio.Condition(), asyncio.Lock()
        cond, retry = self._freed, self._retry
        deadline = loop.time() + self.wait_s
        while adm.held_by_inflight:
            left = deadline - loop.time()
            if left <= 0:
                return adm
            try:
                async with cond:  # woken by settlements here; other processes' are polled
                    await asyncio.wait_for(cond.wait(), timeout=min(left, 0.25))
            except TimeoutError:
                pass
            async with retry:  # one waiter asks the store at a time
                got = self.enforcer.admit_local(call)
                adm = got if got is not None else await asyncio.to_thread(self.enforcer.admit, call)
            if adm.allowed:
                await self._notify(1)  # room for this one: maybe for the next too
        return adm

    async def settle(self, admission: Admission, event: UsageEvent) -> None:
        if admission.reservation_id:
            self.enforcer.settle(admission, event)  # in memory: written by the lease's batch

    async def release(self, admission: Admission) -> None:
        if admission.reservation_id:
            self.enforcer.release(admission)

    # ------------------------------------------------------------------ the sync face
    def admit_sync(self, call: CallInfo) -> Admission:
        enf = self.enforcer
        if not enf.budgets:  # pauses only (the list is cached for a second)
            if not call.agent:
                return _ALLOWED
            return enf.pause_refusal(call, enf.paused()) or _ALLOWED
        adm = enf.admit_local(call)
        if adm is None:
            adm = enf.admit(call)
        if adm.held_by_inflight and self.wait_s > 0:
            adm = self._wait_sync(call, adm)
        return adm

    def _wait_sync(self, call: CallInfo, adm: Admission) -> Admission:
        cond = self._freed_sync
        deadline = time.monotonic() + self.wait_s
        while adm.held_by_inflight:
            left = deadline - time.monotonic()
            if left <= 0:
                return adm
            with cond:  # woken by settlements here; other processes' are polled
                self._sync_waiters += 1
                try:
                    cond.wait(timeout=min(left, 0.25))
                finally:
                    self._sync_waiters -= 1
            with self._retry_sync:  # one waiter asks the store at a time
                got = self.enforcer.admit_local(call)
                adm = got if got is not None else self.enforcer.admit(call)
            if adm.allowed:
                with cond:  # room for this one: maybe for the next too
                    cond.notify(1)
        return adm

    def settle_sync(self, admission: Admission, event: UsageEvent) -> None:
        if admission.reservation_id:
            self.enforcer.settle(admission, event)

    def release_sync(self, admission: Admission) -> None:
        if admission.reservation_id:
            self.enforcer.release(admission)
