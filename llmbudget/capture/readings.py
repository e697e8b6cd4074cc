"""Piggyback quota readings: the rate-limit signals of every proxied answer, noted on the request path
in a few microseconds and parsed and stored once a second off it (`llmbudget/quota/piggyback.py`).

Per backend the newest answer of an interval is kept (and its newest error, even if a success
follows), so the latest state is never lost while a busy proxy writes at most two readings per
backend per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp

from ..config import BackendConfig
from ..quota.piggyback import PendingReading, piggyback_reading
from ..quota.readings_log import store_reading
from ..services import Services
from ..wire import RATE_PREFIXES, WireProtocol, protocol_for
from .upstream import UpstreamResponse

log = logging.getLogger("llmbudget.proxy")

#: pending piggyback quota readings are parsed and stored this often (the newest per backend wins)
READING_INTERVAL_S = 1.0


class RateReadings:
    """The proxy's pending piggyback readings and the loop that stores them."""

    def __init__(self, services: Services, backends: dict[str, BackendConfig]) -> None:
        self.services = services
        self.backends = backends
        #: backend -> [newest error, newest response] seen since the last store
        self._pending: dict[str, list[PendingReading | None]] = {}
        #: backends whose quota is in their error bodies (Gemini): "ok" or "error", what the last reading said
        self._state: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def note(
        self,
        backend: str,
        protocol: WireProtocol,
        resp: aiohttp.ClientResponse | UpstreamResponse,
        body: bytes | None = None,
    ) -> None:
        """Keep this response's rate-limit headers as the backend's newest pending quota reading.

        Every response is looked at (a scan of its raw headers, a few microseconds); parsing and
        storing happen off the request path in `_loop`, once per READING_INTERVAL_S, for
        the newest response of each backend (and its newest error), so the latest state is never
        lost while a busy proxy writes at most two readings per backend per interval.
        `body` is an error body of a protocol whose quota is in its error bodies (Gemini sends no
        rate-limit headers, its 429 carries the quota).
        """
        raw = resp.raw_headers
        found = False
        for k, _ in raw:
            if k.lower().startswith(RATE_PREFIXES):
                found = True
                break
        status = resp.status
        if not found and body is None:
            if status >= 400 or not protocol.quota_in_error_body:
                return
            # Gemini: a success after nothing or an error says "allowed"; store that state change
            if self._state.get(backend) == "ok":
                return
            self._state[backend] = "ok"
        elif body is not None:
            self._state[backend] = "error"
        # the raw header tuple is immutable: kept as is, decoded and parsed later off this path
        pending = PendingReading(raw if found else (), time.time(), status, body)
        slot = self._pending.get(backend)
        if slot is None:
            self._pending[backend] = slot = [None, None]
        slot[1] = pending
        if status >= 400:
            slot[0] = pending  # the newest error of the interval is kept even if a success follows

    def start(self) -> None:
        """Store pending readings once per READING_INTERVAL_S from now on (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop and store what is still pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(READING_INTERVAL_S)
            try:
                await self.store()
            except Exception:
                log.exception("proxy_readings_failed")

    async def store(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        batch: list[tuple[str, PendingReading]] = []
        for backend, (error, newest) in pending.items():
            if error is not None and error is not newest:
                batch.append((backend, error))
            if newest is not None:
                batch.append((backend, newest))
        await asyncio.to_thread(store_piggyback, self.services, batch, self.backends)


def store_piggyback(
    services: Services,
    pending: list[tuple[str, PendingReading]],
    backends: dict[str, BackendConfig] | None = None,
) -> int:
    """Parse and store pending rate-limit signals as `piggyback` quota readings, oldest first."""
    stored = 0
    for backend, item in pending:
        config = backends.get(backend) if backends else None
        protocol = protocol_for(config.kind if config is not None else None)
        try:
            reading = piggyback_reading(backend, protocol, item)
            if reading is None:
                continue
            store_reading(services, reading)
            stored += 1
        except Exception:
            log.exception("proxy_reading_store_failed backend=%s", backend)
    return stored
