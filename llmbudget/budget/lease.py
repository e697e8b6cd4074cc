"""Admission in-process against a lease of budget taken from the shared counters in slices.

A process holds one lease: a reservation in the counter store (its id starts with the process's
owner id, so a dead process's lease is released like any reservation of a dead owner) whose amount
per counter grows in slices and shrinks as calls settle. A call whose worst case fits in what the
lease holds and no call in flight uses is admitted without any I/O; settlements are kept in memory
and written in batches (`FLUSH_S`), each batch one atomic store step that adds the real spend and
takes it out of the lease. Unused amounts go back after `IDLE_S` without calls. When what a
counter's lease has left unused drops below half of its last slice, the batch writer takes the
next slice in the background (`REFILL_SHARE`), so a busy process rarely waits on the store: without
it, every call in flight at the moment the slice ran out asked the store at once.

Exact at the limit: a slice is at most a quarter of what is free in the counter (and 1,024 calls'
worst case), so slices shrink to single calls' worst cases as the remaining budget shrinks; a
counter where the last slice was cut by what was free is "tight", and its unused amount is given
back at every batch, so other processes can use it. The store checks every growth against the
limit atomically, so the sum of all leases never passes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from .counters import Charge, CounterStore, LeaseResult, Refusal, Spend
from .seed import SeedSpec

log = logging.getLogger("llmbudget.budget")

#: a settled call's spend reaches the shared counters within this many seconds
FLUSH_S = 0.1
#: unused lease amounts are given back after this long without a call on their counter
IDLE_S = 2.0
#: a slice covers at most this many worst cases of the call that asked for it
SLICE_CALLS = 1024
#: and at most this fraction of what is free in the counter
SLICE_SHARE = 4
#: the next slice is taken in the background once the unused part falls below 1/REFILL_SHARE of the last
REFILL_SHARE = 2


class LeaseBook:
    """This process's lease: local admission, batched settlement, slices sized by what is free."""

    def __init__(
        self,
        store: CounterStore,
        rid: str,
        *,
        ttl_s: float,
        on_flush: Callable[[LeaseResult, list[object]], None],
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.store = store
        self.rid = rid
        self.ttl_s = ttl_s
        self.on_flush = on_flush
        self.on_error = on_error
        #: what the store holds for this lease, per counter
        self.held: dict[str, int] = {}
        #: worst cases of calls in flight plus real amounts settled and not yet written
        self.used: dict[str, int] = {}
        #: calls in flight per counter
        self.calls: dict[str, int] = {}
        self.last_use: dict[str, float] = {}
        #: counters whose free amount cut the last slice: unused amounts go back at every batch
        self.tight: set[str] = set()
        #: (spent, reserved) per counter from the last store step
        self.totals: dict[str, tuple[int, int]] = {}
        #: per counter: below this unused amount the next slice is taken in the background, and the
        #: charge (a recent call's worst case) that slice is sized from
        self._low: dict[str, int] = {}
        self._refill: dict[str, Charge] = {}
        self._spends: list[Spend] = []
        self._notes: list[object] = []
        self._lock = threading.Lock()
        self._io = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.generation = 0

    # ------------------------------------------------------------------ admission
    def take(self, charges: Sequence[Charge]) -> bool:
        """Admit locally when every limited charge fits in the lease's unused amount (no I/O)."""
        now = time.monotonic()
        with self._lock:
            for c in charges:
                if c.limit is not None and self.held.get(c.key, 0) - self.used.get(c.key, 0) < c.amount:
                    return False
            refill = False
            for c in charges:
                if c.limit is not None:
                    used = self.used[c.key] = self.used.get(c.key, 0) + c.amount
                    if self.held.get(c.key, 0) - used < self._low.get(c.key, 0) and c.key not in self.tight:
                        self._refill[c.key] = c
                        refill = True
                self.calls[c.key] = self.calls.get(c.key, 0) + 1
                self.last_use[c.key] = now
        if refill:
            self._wake.set()
        return True

    def grow(self, charges: Sequence[Charge], seeds: Mapping[str, SeedSpec] | None) -> Refusal | None:
        """Take a slice from the shared counters for what the lease lacks, then admit; or the refusal."""
        self.start()
        with self._io:
            while True:  # each round grows the lease or refuses: it ends when the budget does
                if not seeds and self.take(charges):
                    return None
                sized = self._lacks(charges, sized=True)
                result = self._step(sized, seeds)
                seeds = None
                if result.refusal is not None:
                    exact = self._lacks(charges, sized=False)
                    if exact and any(a.amount != b.amount for a, b in zip(sized, exact, strict=False)):
                        result = self._step(exact, None)
                if result.refusal is not None:
                    r = result.refusal
                    c = next(x for x in charges if x.budget == r.budget)
                    return Refusal(r.budget, r.spent, r.reserved, r.limit, c.amount)

    def _lacks(self, charges: Sequence[Charge], *, sized: bool) -> list[Charge]:
        """What the lease lacks for `charges`: exactly, or rounded up to a slice."""
        out: list[Charge] = []
        with self._lock:
            for c in charges:
                if c.limit is None:
                    continue
                lack = c.amount - (self.held.get(c.key, 0) - self.used.get(c.key, 0))
                if lack <= 0:
                    continue
                amount = max(lack, self._slice(c)) if sized else lack
                out.append(Charge(c.budget, c.key, c.read_keys, c.limit, amount, c.unit))
        return out

    def _slice(self, c: Charge) -> int:
        """A slice for calls like `c`: SLICE_CALLS worst cases, at most 1/SLICE_SHARE of what is free."""
        target = c.amount * SLICE_CALLS
        free = self._free(c)
        return target if free is None else min(target, free // SLICE_SHARE)

    def _free(self, c: Charge) -> int | None:
        if c.limit is None or c.key not in self.totals:
            return None
        used = sum(sum(self.totals.get(k, (0, 0))) for k in c.read_keys)
        return max(0, c.limit - used)

    # ------------------------------------------------------------------ settlement
    def settled(self, charges: Sequence[Charge], spends: Sequence[Spend], note: object) -> None:
        """A call ended: its worst case leaves the lease's used part, its real amount waits for the batch."""
        with self._lock:
            self._unuse(charges)
            for sp in spends:
                self.used[sp.key] = self.used.get(sp.key, 0) + sp.amount
            self._spends.extend(spends)
            self._notes.append(note)
        if not self._wake.is_set():  # set() takes a lock and notifies: once per batch is enough
            self._wake.set()

    def released(self, charges: Sequence[Charge]) -> None:
        """A call that spent nothing: its worst case is free again in the lease."""
        with self._lock:
            self._unuse(charges)

    def _unuse(self, charges: Sequence[Charge]) -> None:
        for c in charges:
            if c.limit is not None:
                self.used[c.key] = self.used.get(c.key, 0) - c.amount
            self.calls[c.key] = max(0, self.calls.get(c.key, 0) - 1)

    # ------------------------------------------------------------------ store steps
    def _step(
        self, grow: Sequence[Charge], seeds: Mapping[str, SeedSpec] | None, *, final: bool = False
    ) -> LeaseResult:
        """One atomic store step: write the pending spends, give back what is unused, grow. Holds `_io`."""
        now = time.monotonic()
        with self._lock:
            spends, self._spends = self._spends, []
            notes, self._notes = self._notes, []
            give: dict[str, int] = {}
            growing = {g.key for g in grow}
            for key, h in self.held.items():
                if key in growing:  # its spare is part of what this step counts on
                    continue
                spare = min(h - self.used.get(key, 0), h)  # the spends written now leave both alike
                if spare > 0 and (final or key in self.tight or now - self.last_use.get(key, 0) > IDLE_S):
                    give[key] = spare
            calls = {k: n for k, n in self.calls.items() if n or k in self.held}
        try:
            result = self.store.lease(
                self.rid, spends, grow, give_back=give, calls=calls, ttl_s=self.ttl_s, seeds=seeds
            )
        except Exception:
            with self._lock:  # written next time; the lease still covers them in the store
                self._spends[:0] = spends
                self._notes[:0] = notes
            raise
        with self._lock:
            for sp in spends:
                self.used[sp.key] = self.used.get(sp.key, 0) - sp.amount
            self.held = {k: v for k, v in result.held.items() if v > 0}
            for k in [k for k, v in self.used.items() if v == 0 and k not in self.held]:
                del self.used[k]
            for k in [k for k, v in self.calls.items() if v == 0 and k not in self.held]:
                del self.calls[k]
            self.totals.update(result.totals)
            for g in grow:
                free = self._free(g)
                if free is not None and free < g.amount * (SLICE_SHARE - 1):
                    self.tight.add(g.key)
                elif free is not None:
                    self.tight.discard(g.key)
                if result.refusal is None:
                    self._low[g.key] = g.amount // REFILL_SHARE
            for k in [k for k in self._low if k not in self.held]:  # windows gone by
                del self._low[k]
            self.generation += 1
        if spends or notes:
            self.on_flush(result, notes)
        return result

    def flush(self, *, final: bool = False) -> None:
        """Write the pending spends now (and give back unused amounts that are due, and take the next
        slice of counters running low)."""
        with self._io:
            with self._lock:
                refill, self._refill = ([] if final else list(self._refill.values())), {}
                due = bool(self._spends or self._notes or refill) or final
                if not due:
                    now = time.monotonic()
                    due = any(
                        h > self.used.get(k, 0)
                        and (k in self.tight or now - self.last_use.get(k, 0) > IDLE_S)
                        for k, h in self.held.items()
                    )
            if due:
                # a refused slice (the limit is near) still writes the spends: calls then ask for their own
                self._step(self._slices(refill) if refill else (), None, final=final)

    def _slices(self, charges: Sequence[Charge]) -> list[Charge]:
        """The next slice of each counter in `charges` still running low."""
        out: list[Charge] = []
        with self._lock:
            for c in charges:
                if c.key in self.tight or self.held.get(c.key, 0) - self.used.get(c.key, 0) >= self._low.get(
                    c.key, 0
                ):
                    continue
                target = self._slice(c)
                if target > 0:
                    out.append(Charge(c.budget, c.key, c.read_keys, c.limit, target, c.unit))
        return out

    def start(self) -> None:
        """Start the batch writer (idle give-backs, batched settlements) once."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, daemon=True, name="llmbudget-lease-flush"
                    )
                    self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            if self._stop.is_set():
                return
            if self._wake.is_set():
                if not self._refill:  # a slice running low is taken at once
                    time.sleep(FLUSH_S)  # gather the settlements of this moment into one step
                self._wake.clear()
            try:
                self.flush()
            except Exception as e:  # the store briefly unavailable: the next round writes them
                log.error("budget lease_flush_failed error=%s: %s", type(e).__name__, e)
                if self.on_error is not None:
                    self.on_error(e)
                self._stop.wait(0.5)

    def close(self) -> None:
        """Write what is pending and give the whole lease back (a clean exit)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held or self._spends:
            try:
                self.flush(final=True)
            except Exception as e:
                log.warning("budget lease_close_failed error=%s: %s", type(e).__name__, e)
