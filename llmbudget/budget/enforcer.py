"""Budget enforcement: reserve a call's worst case before it is sent, settle to the real cost after.

`BudgetEnforcer` is synchronous. `BudgetGate` (`llmbudget/budget/gate.py`) is the one gate over
it (`Gate` in `llmbudget.admission`), with two faces: the async one (the proxy, async SDK clients)
admits from the lease on the caller's event loop and runs store steps in a worker thread; the
sync one (sync SDK clients) calls the enforcer in the caller's thread, with no event loop.

Admission, settlement and release are here; the enforcer's other parts are mixed in, one module
each: the pause list (`llmbudget/budget/pauses.py`), threshold warnings and the limit alert
(`llmbudget/budget/notices.py`) and reconciliation with the ledger
(`llmbudget/budget/reconcile.py`). A call's bookings are `llmbudget/budget/booking.py`'s.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from ..admission import Admission, CallInfo
from ..alerts import Notifier
from ..errors import BudgetUnavailable, LLMBudgetError
from ..events import UsageEvent, new_id, utcnow
from ..money import from_nano, to_nano
from ..store.base import Ledger
from .booking import Booked, Pending
from .counters import Charge, CounterStore, Reconciled, Refusal, Spend
from .estimate import PriceFn, max_output_tokens
from .lease import LeaseBook
from .notices import BudgetNotices, amount_text
from .pauses import PauseRecord, Pauses
from .reconcile import Reconciliation
from .rules import Budget
from .seed import SeedSpec, spec_for
from .windows import format_reset

log = logging.getLogger("llmbudget.budget")

#: Retry-After of a call refused only because calls in flight hold the rest of the budget
INFLIGHT_RETRY_S = 2
#: the answer to a call no budget applies to
ALLOWED = Admission(allowed=True)


class BudgetEnforcer(Reconciliation, BudgetNotices, Pauses):
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
        state: Ledger | None = None,
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
        self._pending: dict[str, Pending] = {}
        #: numbers the admissions of this process (their ids are keys of `_pending`, never stored)
        self._admissions = itertools.count(1)
        self._lock = threading.Lock()
        self._pauses: tuple[float, dict[str, PauseRecord]] = (0.0, {})
        self._memory_pauses: dict[str, PauseRecord] = {}
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
        tin, tout, nano = self.worst_case_nano(call)
        return tin, tout, None if nano is None else from_nano(nano)

    def worst_case_nano(self, call: CallInfo) -> tuple[int, int, int | None]:
        """`worst_case` with the cost in integer nano-USD (what the counters hold)."""
        tin = max(0, math.ceil(int(call.est_input_tokens) * self.input_factor))
        tout = call.max_output_tokens
        if tout is None or tout <= 0:
            tout = max_output_tokens(call.model, call.provider, tin, self.default_max_output)
        tout = int(tout) * max(1, int(call.choices))
        price = self.price
        nano_of = getattr(price, "nano", None)  # the price book's own: no Decimal on the way
        # a dearer tier asked for is reserved at its rates (never under the standard ones)
        tier = (call.service_tier,) if call.service_tier else ()
        if nano_of is not None:
            return tin, tout, nano_of(call.model, call.provider, tin, tout, self.clock(), *tier)
        cost = price(call.model, call.provider, tin, tout, self.clock(), *tier)
        return tin, tout, None if cost is None else to_nano(cost)

    def _charges(self, call: CallInfo, now: datetime, tokens: int, cost_nano: int | None) -> list[Booked]:
        out: list[Booked] = []
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
            out.append(Booked(b, charge, w, prefix, value))
        return out

    def _seeds(self, booked: list[Booked], call: CallInfo) -> dict[str, SeedSpec] | None:
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
        tin, tout, cost = self.worst_case_nano(call)
        if cost is None and call.model not in self._unpriced_logged:
            self._unpriced_logged.add(call.model)
            log.warning(
                "budget unpriced_model model=%s backend=%s: not counted against USD budgets until priced",
                call.model,
                call.backend,
            )
        booked = self._charges(call, now, tin + tout, cost)
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

    def _admitted(self, call: CallInfo, booked: list[Booked], charges: list[Charge]) -> Admission:
        rid = f"{self.book.rid}#{next(self._admissions)}"  # known to this process only
        with self._lock:
            self._pending[rid] = Pending(booked, call, charges)
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
            return ALLOWED
        try:
            tin, tout, cost = self.worst_case_nano(call)
            booked = self._charges(call, self.clock(), tin + tout, cost)
        except Exception:
            return None
        if not booked:
            return ALLOWED
        if cost is None and call.model not in self._unpriced_logged:
            return None  # logged once by admit()
        charges = [x.charge for x in booked]
        if self._seeds(booked, call) is not None or not self.book.take(charges):
            return None
        return self._admitted(call, booked, charges)

    def _refuse(self, call: CallInfo, booked: list[Booked], r: Refusal, now: datetime) -> Admission:
        hit = next(x for x in booked if x.budget.name == r.budget)
        b, w = hit.budget, hit.window
        reset = format_reset(w.reset, self.tz)
        if r.spent + r.amount <= r.limit:
            # spent money leaves room: calls in flight hold the rest until they settle
            return self._refuse_inflight(call, hit, r)
        retry = max(1, math.ceil((w.reset - now).total_seconds())) if w.reset is not None else None
        usage = (
            f"budget '{b.name}' has spent {amount_text(b, r.spent)} of its {b.describe_limit()} limit"
            + (f" ({amount_text(b, r.reserved)} reserved by calls in flight)" if r.reserved else "")
            + f"; this call needs up to {amount_text(b, r.amount)}"
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

    def _refuse_inflight(self, call: CallInfo, hit: Booked, r: Refusal) -> Admission:
        b = hit.budget
        try:
            n = self.store.inflight(hit.charge.read_keys)
        except Exception:  # the count is for the message only
            n = 0
        held = f"{amount_text(b, r.reserved)} reserved by {n} call{'' if n == 1 else 's'} in flight"
        if not n:
            held = f"{amount_text(b, r.reserved)} reserved by calls in flight"
        msg = (
            f"Budget '{b.name}' has spent {amount_text(b, r.spent)} of its {b.describe_limit()} limit and "
            f"{held}; this call needs up to {amount_text(b, r.amount)}. The reservations settle to the "
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
        cost = event.cost_nano
        for x in pending.booked:
            if x.budget.unit == "usd":
                # an answer we cannot price keeps its reserved worst case: never under-count
                amount = cost if cost is not None else x.charge.amount
                ledger = 0 if local or cost is None else cost
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
