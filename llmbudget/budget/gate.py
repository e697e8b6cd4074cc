"""`BudgetGate`: the gate over one enforcer (`Gate` in `llmbudget/admission.py`), with an async and a sync face.

The proxy and async SDK clients await the async face on their own event loop; sync SDK clients
call the sync face in their own thread. A call refused only because calls in flight hold the
rest of the budget waits here, briefly, for them to settle.
"""

from __future__ import annotations

import asyncio
import threading
import time

from ..admission import Admission, CallInfo
from ..events import UsageEvent
from .enforcer import ALLOWED, BudgetEnforcer


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
        #: calls of the async face waiting for a settlement (none: a settlement wakes nothing)
        self._async_waiters = 0
        enforcer.on_freed = self._on_freed

    def _on_freed(self) -> None:
        if self._sync_waiters:  # read without the lock: a missed wake-up is caught by the poll
            with self._freed_sync:
                self._freed_sync.notify(2)
        loop, cond = self._loop, self._freed
        if not self._async_waiters or loop is None or cond is None or loop.is_closed():
            return  # read without the lock: a missed wake-up is caught by the waiters' poll
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
                return ALLOWED
            pauses = enf.cached_pauses()
            if pauses is None:
                pauses = await asyncio.to_thread(enf.paused)
            return enf.pause_refusal(call, pauses) or ALLOWED
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
            self._async_waiters += 1
            try:
                async with cond:  # woken by settlements here; other processes' are polled
                    await asyncio.wait_for(cond.wait(), timeout=min(left, 0.25))
            except TimeoutError:
                pass
            finally:
                self._async_waiters -= 1
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
                return ALLOWED
            return enf.pause_refusal(call, enf.paused()) or ALLOWED
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
