"""From a finished call to its event in the ledger and its settled admission: one path for the proxy,
`wrap()`, the WebSocket relay and the translator (`CallRecorder`), and what names and prices a
backend's calls (`Target`). The event itself is built by `llmbudget/capture/event.py`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..admission import Admission, Gate
from ..config import BackendConfig
from ..events import MAX_TEXT, UsageEvent
from ..pricing import PriceBook
from ..store.base import Ledger
from ..wire import WireProtocol, protocol_for
from .base import CallMeter
from .event import build_event, call_status, guess_provider

log = logging.getLogger("llmbudget.capture")


@dataclass(frozen=True, slots=True)
class Target:
    """The backend a call went to, as its event names and prices it (one per backend or wrapped client)."""

    #: the backend's name (the event's `backend`)
    backend: str
    protocol: WireProtocol
    base_url: str | None = None
    #: the provider every call of this backend is priced as (configured, or `local`); None: guessed per model
    provider: str | None = None
    #: calls cost nothing (`local: true`, `wrap(local=True)`)
    local: bool = False

    @classmethod
    def of_backend(cls, name: str, backend: BackendConfig) -> Target:
        return cls(
            backend=name,
            protocol=protocol_for(backend.kind),
            base_url=backend.base_url,
            provider=backend.provider or ("local" if backend.local else None),
            local=backend.local,
        )

    def provider_of(self, model: str) -> str:
        """The price-book provider of a call of `model` here."""
        if self.provider:
            return self.provider
        try:
            return guess_provider(model, self.base_url, self.protocol.name)
        except Exception:  # the price book is optional on this path; fall back to the wire protocol
            return self.protocol.provider


class CallRecorder:
    """The one path from a finished call to its event in the ledger and its settled admission.

    The proxy, `wrap()`, the WebSocket relay and the translator all build their events here
    (`build`: status, provider, prices, why it failed), hand them to the ledger (`record`, or
    `record_batch` for several answered in one turn of the event loop), wait for the audit line's
    durability as configured, and settle or release the budget admission. Nothing here raises:
    a failure is logged and the call goes on.
    """

    __slots__ = ("_durable_future", "_name", "_tasks", "_wait_durable", "gate", "ledger", "prices", "source")

    def __init__(self, ledger: Ledger, prices: PriceBook | None, gate: Gate | None, *, source: str) -> None:
        self.ledger = ledger
        self.prices = prices
        self.gate = gate
        #: the events' `source` (`proxy`, `sdk`) and the prefix of this recorder's log lines
        self.source = source
        self._name = "proxy" if source == "proxy" else "wrap"
        # resolved once: `storage.durability: fsync` gives the ledger these; other ledgers lack them
        self._durable_future: Callable[[], Future[None] | None] | None = getattr(
            ledger, "durable_future", None
        )
        self._wait_durable: Callable[[], None] | None = getattr(ledger, "wait_durable", None)
        #: settlements running on the event loop, kept referenced until done
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- the event
    def build(
        self,
        meter: CallMeter,
        target: Target,
        *,
        event_id: str,
        attribution: dict[str, Any],
        http_status: int,
        status: str | None,
        interrupted: bool,
        fallback: bool,
        started: float,
        ttft_ms: float | None = None,
        upstream_reached: bool = True,
        reason: str | None = None,
    ) -> UsageEvent | None:
        """The call's event (`status` None: from the answer), or None when it cannot be built (logged)."""
        try:
            if status is None:
                status = call_status(
                    meter, http_status=http_status, interrupted=interrupted, fallback=fallback
                )
            event = build_event(
                meter,
                event_id=event_id,
                backend=target.backend,
                provider=target.provider_of(meter.model or meter.request_model or ""),
                prices=self.prices,
                local=target.local,
                attribution=attribution,
                http_status=http_status,
                status=status,
                started=started,
                ttft_ms=ttft_ms,
                source=self.source,
                upstream_reached=upstream_reached,
            )
            # why the call failed (a broken answer, an unreachable backend, an error inside the stream)
            why = reason or (meter.stream_error if status == "error" else None)
            if why:
                event.reason = ("; ".join(r for r in (why, event.reason) if r))[:MAX_TEXT]
            return event
        except Exception:
            log.exception("%s_event_failed backend=%s", self._name, target.backend)
            return None

    # ---------------------------------------------------------------- the ledger
    def record(self, event: UsageEvent) -> None:
        """Hand the event to the ledger (its audit line is written now, the database row later)."""
        try:
            self.ledger.record(event)
        except Exception:
            log.exception("%s_record_failed id=%s", self._name, event.id)

    def record_batch(self, events: list[UsageEvent]) -> None:
        """Several events with one audit write."""
        try:
            self.ledger.record_batch(events)
        except Exception:
            log.exception("%s_record_failed batch=%d", self._name, len(events))

    async def durable(self) -> None:
        """With `storage.durability: fsync`, wait (without blocking the loop) for the recorded lines' fsync."""
        fut = self._durable_future() if self._durable_future is not None else None
        if fut is not None:
            await asyncio.wrap_future(fut)

    def durable_sync(self) -> None:
        """`durable` for a caller without an event loop (a sync SDK client's thread); never raises."""
        if self._wait_durable is not None:
            try:
                self._wait_durable()
            except Exception:
                log.exception("%s_durable_failed", self._name)

    # ---------------------------------------------------------------- the admission
    def settle_later(self, admission: Admission, event: UsageEvent) -> None:
        """After the answer went out: settle the reservation, in the caller's thread when the gate
        has a sync face (in memory: no task needed), else in a task on the running loop."""
        settle_sync = getattr(self.gate, "settle_sync", None)
        if settle_sync is None:
            self.spawn(self.settle(admission, event))
            return
        try:
            settle_sync(admission, event)
        except Exception:
            log.exception("%s_settle_failed id=%s", self._name, event.id)

    async def settle(self, admission: Admission, event: UsageEvent) -> None:
        if self.gate is not None:
            try:
                await self.gate.settle(admission, event)
            except Exception:
                log.exception("%s_settle_failed id=%s", self._name, event.id)

    async def release(self, admission: Admission, call_id: str) -> None:
        if self.gate is not None:
            try:
                await self.gate.release(admission)
            except Exception:
                log.exception("%s_release_failed id=%s", self._name, call_id)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the running loop, referenced until done (`drain` waits for it)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> frozenset[asyncio.Task[None]]:
        """The settlements still running."""
        return frozenset(self._tasks)

    async def drain(self) -> None:
        """Wait for every settlement still running."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
