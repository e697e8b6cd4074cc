"""Reports run beside the proxy, never in its way: off the event loop, a few at a time.

A report is database work and Python arithmetic over its rows. Run on the event loop it would
hold every proxied call until it ends; run on Starlette's default thread pool (40 threads) a
burst of them would still take the interpreter lock from the proxy most of the time. So report
routes go through one `ReportPool` per app: at most `server.report_concurrency` reports run at
once in worker threads; the next ones wait up to `server.report_wait_s` for a turn and are then
answered 503 with `Retry-After` (the error shape of the API), so a flood of reports queues or is
refused while the proxy keeps its loop and most of the interpreter.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..services import Services

T = TypeVar("T")


class ReportPool:
    """Runs report functions in threads, `concurrency` at a time; waits at most `wait_s` for a turn."""

    def __init__(self, concurrency: int = 2, wait_s: float = 10.0) -> None:
        self.concurrency = concurrency
        self.wait_s = wait_s
        self._slots: asyncio.Semaphore | None = None
        #: reports answered 503 because no turn came within wait_s (for /metrics and tests)
        self.refused = 0

    def _semaphore(self) -> asyncio.Semaphore:
        # made on first use, inside the server's event loop
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a worker thread once a turn is free; 503 when none comes in time."""
        slots = self._semaphore()
        try:
            await asyncio.wait_for(slots.acquire(), timeout=self.wait_s)
        except TimeoutError:
            self.refused += 1
            retry = max(1, round(self.wait_s))
            raise HTTPException(
                503,
                f"llmbudget is busy with other reports ({self.concurrency} at a time, "
                "server.report_concurrency); try again shortly",
                headers={"Retry-After": str(retry)},
            ) from None
        try:
            return await run_in_threadpool(functools.partial(fn, *args, **kwargs))
        finally:
            slots.release()


def report_pool(services: Services) -> ReportPool:
    """The app's one ReportPool (made from `server.report_concurrency` / `report_wait_s` on first use)."""
    pool = services.report_pool
    if pool is None:
        server = services.config.server
        pool = ReportPool(server.report_concurrency, server.report_wait_s)
        services.report_pool = pool
    assert isinstance(pool, ReportPool)
    return pool
