"""Reports run beside the proxy, never in its way: in worker processes, a few at a time.

A report is database work and Python arithmetic over its rows. Run on the event loop it would
hold every proxied call until it ends; run in threads it would still hold the interpreter lock
(the GIL) most of the time, adding milliseconds to every proxied call while it runs. So report
routes go through one `ReportPool` per app: at most `server.report_concurrency` reports run at
once, each in one of as many worker processes ("spawn" context, started on first use), which
open the ledger once from the same storage URL (no audit log, no replay: they only read), run
at the lowest CPU priority (`nice` 19, and on Linux `SCHED_IDLE`: on a busy machine the proxy
wins the CPU the moment it wants it) and send back the report encoded as JSON (the server passes
the bytes on unread). The next reports wait up to `server.report_wait_s` for a turn and are
then answered 503 with `Retry-After` (the error shape of the API). A worker that
dies mid-report is a 503 for that report, and the next one starts a fresh pool; the server's
shutdown stops the workers without waiting for a report to end.

A ledger without a storage URL to reopen runs its reports in threads, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import LLMBudgetError
from ..services import Services
from ..store import Ledger, ledger_options, open_ledger

T = TypeVar("T")
P = ParamSpec("P")
log = logging.getLogger(__name__)

#: how much lower a report worker's CPU priority is than the server's (`nice`)
WORKER_NICE = 19

#: the ledger a worker process opened in `_open_worker_ledger`
_worker_ledger: Ledger | None = None


#: how often a report worker checks that the server that started it is still alive
PARENT_CHECK_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """End this worker once the server that started it is gone, even killed with `kill -9`: the
    worker holds both ends of its task pipe, so it would otherwise wait on it forever."""
    while parent != 1 and os.getppid() == parent:  # 1: orphaned before this thread started
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _open_worker_ledger(url: str, options: dict[str, object]) -> None:
    """A worker's initializer: open the ledger once, read-only in effect (it never records)."""
    global _worker_ledger
    threading.Thread(
        target=_exit_with_parent, args=(os.getppid(),), name="llmbudget-parent-watch", daemon=True
    ).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group; the server stops us
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)  # the proxy's process wins the CPU whenever both want it
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None:
        # Linux: run only when no other task wants the CPU, and yield at once when the proxy
        # wakes (a nice level alone still lets a report hold a core for a scheduler slice)
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, idle, os.sched_param(0))

    # no audit log, no replay, a spool name of its own: the serving process owns every write
    opts = {**options, "audit": False, "replay_audit": False, "instance": f"report{os.getpid()}"}
    _worker_ledger = open_ledger(url, **opts)


#: what a worker sends back: the report encoded as JSON, or an error of llmbudget's as
#: (type, args, attributes)
_Outcome = (
    tuple[Literal["ok"], bytes]
    | tuple[Literal["error"], type[LLMBudgetError], tuple[object, ...], dict[str, object]]
)


def json_bytes(data: dict[str, Any]) -> bytes:
    """`data` encoded exactly as Starlette's `JSONResponse` encodes it."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode(
        "utf-8"
    )


def _run_in_worker(fn: Callable[..., dict[str, Any]], kwargs: dict[str, object]) -> _Outcome:
    """`fn(ledger, **kwargs)` in a worker, encoded there (the server passes the bytes on as they
    are); llmbudget's own errors travel back as (type, args, attributes)."""
    try:
        return ("ok", json_bytes(fn(_worker_ledger, **kwargs)))
    except LLMBudgetError as e:  # their __init__ takes other arguments than args: rebuilt by hand
        return ("error", type(e), e.args, dict(vars(e)))


def _rebuild(cls: type[LLMBudgetError], args: tuple[object, ...], attrs: dict[str, object]) -> LLMBudgetError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(attrs)
    return err


def reopenable(ledger: object) -> str | None:
    """The storage URL a worker process can open `ledger` from; None when there is none."""
    url = getattr(ledger, "url", None)
    if isinstance(url, str) and url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return url
    return None


class ReportPool:
    """Runs reports `concurrency` at a time, in worker processes when `reopen` names a ledger to open.

    `run(fn, ...)` runs any callable in a thread; `report_json(fn, **kwargs)` runs `fn(ledger, **kwargs)`
    (a module-level function returning a JSON-ready dict) and encodes its result, in a worker
    process, or in a thread on `ledger` when there is no `reopen`. Both wait at most `wait_s` for a
    turn, then answer 503.
    """

    def __init__(
        self,
        concurrency: int = 2,
        wait_s: float = 10.0,
        *,
        ledger: Ledger | None = None,
        reopen: tuple[str, dict[str, object]] | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.wait_s = wait_s
        self.ledger = ledger
        self.reopen = reopen
        self._slots: asyncio.Semaphore | None = None
        self._executor: ProcessPoolExecutor | None = None
        #: reports answered 503 because no turn came within wait_s (for /metrics and tests)
        self.refused = 0
        #: reports answered 503 because their worker process died
        self.crashed = 0

    def _semaphore(self) -> asyncio.Semaphore:
        # made on first use, inside the server's event loop
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
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
            yield
        finally:
            slots.release()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a worker thread once a turn is free; 503 when none comes in time."""
        async with self._turn():
            return await run_in_threadpool(functools.partial(fn, *args, **kwargs))

    async def report_json(self, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> bytes:
        """`fn(ledger, **kwargs)` encoded as JSON, in a worker process (threads without `reopen`); 503
        when no turn comes or the worker died. The server's event loop never decodes or encodes a
        large report (a two-year `by=day` is about a millisecond of each): it passes the bytes on."""
        if self.reopen is None:
            return await self.run(lambda: json_bytes(fn(self.ledger, **kwargs)))
        async with self._turn():
            executor = self._pool()
            try:
                out = await asyncio.get_running_loop().run_in_executor(executor, _run_in_worker, fn, kwargs)
            except BrokenProcessPool as e:
                self.crashed += 1
                log.warning("report_worker_died report=%s error=%s", getattr(fn, "__name__", fn), e)
                self._discard(executor)
                raise HTTPException(
                    503,
                    "a report worker process stopped before the report was done; try again",
                    headers={"Retry-After": "1"},
                ) from None
        if out[0] == "error":
            raise _rebuild(out[1], out[2], out[3])
        return out[1]

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            assert self.reopen is not None
            url, options = self.reopen
            self._executor = ProcessPoolExecutor(
                max_workers=self.concurrency,
                # never fork a process that has threads and an event loop running
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_open_worker_ledger,
                initargs=(url, options),
            )
        return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        _stop(executor)

    def close(self) -> None:
        """Stop the worker processes now (reports still running are cut short)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            _stop(executor)


def _stop(executor: ProcessPoolExecutor) -> None:
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for p in processes:  # a long report would otherwise hold the server's exit until it ends
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def report_pool(services: Services) -> ReportPool:
    """The app's one ReportPool (made from `server.report_concurrency` / `report_wait_s` on first use)."""
    pool = services.report_pool
    if pool is None:
        server = services.config.server
        url = reopenable(services.ledger)
        reopen = None if url is None else (url, ledger_options(services.config))
        pool = ReportPool(
            server.report_concurrency, server.report_wait_s, ledger=services.ledger, reopen=reopen
        )
        services.report_pool = pool
    assert isinstance(pool, ReportPool)
    return pool


def close_report_pool(services: Services) -> None:
    """Stop the app's report workers (the server's shutdown)."""
    pool = services.report_pool
    if isinstance(pool, ReportPool):
        pool.close()
