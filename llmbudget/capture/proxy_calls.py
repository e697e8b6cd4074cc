"""What the proxy does with a metered call besides forwarding it: asking the budget gate (`call_info`,
`_admit`) and recording the call's event through the `CallRecorder`, built and written together
with the others answered in the same turn of the event loop (`_record_batched`). A base of `Proxy`,
so the request path calls these as its own methods."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..admission import Admission, CallInfo, Gate
from ..errors import BudgetUnavailable, LLMBudgetError
from ..events import UsageEvent
from ..services import Services
from .asgi import Send, header_safe, send_error
from .readings import RateReadings
from .record import CallRecorder, Target
from .request import ProxyRequest

log = logging.getLogger("llmbudget.proxy")

#: a call waiting for its event to be built with the others of this turn of the loop
Pending = tuple[ProxyRequest, str, dict[str, Any], "asyncio.Future[UsageEvent | None]"]


class MeteredCalls:
    """Admission and recording of the proxy's metered calls."""

    services: Services
    #: the one path from a finished call to its event and settled admission
    recorder: CallRecorder
    #: backend -> what its calls' events name and are priced as
    _targets: dict[str, Target]
    #: metered calls being forwarded now; with more than one, events are built and written in batches
    _inflight: int
    _batch: list[Pending]
    #: backend -> `host:port` of its base_url, named when it cannot be reached (never path or query)
    _where: dict[str, str]
    #: piggyback quota readings: every answer's rate-limit signals, stored off the request path
    readings: RateReadings

    # ---------------------------------------------------------------- admission
    def call_info(self, req: ProxyRequest) -> CallInfo:
        """What the budget gate is told about a metered call before it is forwarded."""
        meter = req.meter
        assert meter is not None
        target = self._targets[req.backend]
        return CallInfo(
            backend=req.backend,
            protocol=req.proto.name,
            provider=target.provider_of(meter.request_model or ""),
            model=meter.request_model or "",
            est_input_tokens=meter.est_input_tokens(),
            max_output_tokens=meter.max_output_tokens,
            choices=meter.choices,
            service_tier=meter.requested_tier,
            local=target.local,
            streamed=meter.stream,
            **{k: v for k, v in req.attribution.items() if k != "tags"},
            tags=dict(req.attribution.get("tags") or {}),
        )

    async def _admit(self, gate: Gate, req: ProxyRequest, send: Send) -> bool:
        """Ask the budget gate; False when the call was refused (the 429 is already sent)."""
        meter = req.meter
        assert meter is not None
        call = self.call_info(req)
        try:
            admission: Admission = await gate.admit(call)
        except Exception as e:  # fail closed: a budget that cannot be checked does not let spend through
            log.error("proxy_gate_failed backend=%s error=%s: %s", req.backend, type(e).__name__, e)
            cause = str(e) if isinstance(e, LLMBudgetError) else f"{type(e).__name__}: {e}"
            await send_error(
                send,
                req.proto,
                503,
                cause
                if isinstance(e, BudgetUnavailable)
                else f"llmbudget could not check the budget ({cause}); try again",
                "budget_check_failed",
            )
            return False
        if not admission.allowed:
            message = admission.message or admission.notice or "budget exhausted"
            extra = [(b"x-llmbudget-request-id", req.event_id.encode())]
            if admission.retry_after_s is not None:
                extra.append((b"retry-after", str(int(admission.retry_after_s)).encode()))
            if admission.notice:
                extra.append((b"x-llmbudget-notice", header_safe(admission.notice)))
            req.reason = message  # the refusal's reason, shown with the event (dashboard: recent refusals)
            await self.record_call(
                req,
                req.backend,
                http_status=admission.status or 429,
                status="blocked",
                interrupted=False,
                upstream_reached=False,
            )
            await send_error(send, req.proto, admission.status or 429, message, "budget_exceeded", extra)
            return False
        # nothing reserved (no budget applies, pause check only): nothing to settle or release later
        req.admission = admission if admission.reservation_id or admission.fallback_backend else None
        if admission.fallback_backend:
            req.fallback = True
            req.notice = admission.notice
            if admission.fallback_model:
                req.body = meter.set_model(admission.fallback_model)
                req.path = meter.upstream_path(req.path)
        return True

    # ---------------------------------------------------------------- events
    def _record(
        self,
        req: ProxyRequest,
        target: str,
        *,
        http_status: int,
        status: str | None,
        interrupted: bool,
        ttft_ms: float | None = None,
        upstream_reached: bool = True,
        defer: bool = False,
    ) -> UsageEvent | None:
        """Build (and unless `defer`, record) the call's event. Never raises: a failure is logged."""
        meter = req.meter
        if meter is None:
            return None
        event = self.recorder.build(
            meter,
            self._targets[target],
            event_id=req.event_id,
            attribution=req.attribution,
            http_status=http_status,
            status=status,
            interrupted=interrupted,
            fallback=req.fallback,
            started=req.started,
            ttft_ms=ttft_ms,
            upstream_reached=upstream_reached,
            reason=req.reason,
        )
        if event is not None and not defer:
            self.recorder.record(event)
        return event

    def _record_batched(self, req: ProxyRequest, target: str, **kw: Any) -> asyncio.Future[UsageEvent | None]:
        """Build and record the call's event with the others that finish in this loop iteration:
        one pass over warm code and one audit write for all of them."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[UsageEvent | None] = loop.create_future()
        batch = self._batch
        batch.append((req, target, kw, fut))
        if len(batch) == 1:
            loop.call_soon(self._flush_batch)
        return fut

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        try:
            self._flush(batch)
        finally:  # whatever happened, no call waits forever for its event
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _flush(self, batch: list[Pending]) -> None:
        events = [
            self._record(req, target, interrupted=False, defer=True, **kw) for req, target, kw, _ in batch
        ]
        kept = [e for e in events if e is not None]
        if kept:
            self.recorder.record_batch(kept)
        for (_, _, _, fut), event in zip(batch, events, strict=True):
            if not fut.done():
                fut.set_result(event)

    async def record_call(
        self,
        req: ProxyRequest,
        target: str,
        *,
        http_status: int,
        status: str | None,
        interrupted: bool,
        ttft_ms: float | None = None,
        upstream_reached: bool = True,
    ) -> UsageEvent | None:
        """Record the call's event and wait until its audit line is as durable as configured.

        Called before the answer's last byte goes out, so an answered call survives a kill. `status`
        None: read from the answer (ok, error, interrupted, fallback).
        """
        event = self._record(
            req,
            target,
            http_status=http_status,
            status=status,
            interrupted=interrupted,
            ttft_ms=ttft_ms,
            upstream_reached=upstream_reached,
        )
        await self.recorder.durable()
        return event

    async def _release(self, req: ProxyRequest) -> None:
        """Give back what the call's admission reserved (it spent nothing)."""
        if req.admission is not None:
            await self.recorder.release(req.admission, req.event_id)

    # ---------------------------------------------------------------- a backend out of reach
    def _unreachable(self, target: str, e: BaseException) -> str:
        return f"llmbudget could not reach backend {target!r} at {self._where[target]} ({type(e).__name__})"

    async def _connect_failed(
        self, req: ProxyRequest, target: str, send: Send, e: BaseException, started: bool = False
    ) -> None:
        log.warning("proxy_connect_failed backend=%s path=%s error=%s", target, req.path, type(e).__name__)
        req.reason = self._unreachable(target, e)
        event = await self.record_call(
            req, target, http_status=502, status="error", interrupted=False, upstream_reached=started
        )
        await send_error(
            send,
            req.proto,
            502,
            req.reason,
            "upstream_unreachable",
            [(b"x-llmbudget-request-id", req.event_id.encode())],
        )
        if started and req.admission is not None and event is not None:
            self.recorder.spawn(self.recorder.settle(req.admission, event))
        else:
            await self._release(req)
