"""From a finished call to its event in the ledger and its settled admission, one path for the proxy,
`wrap()`, the WebSocket relay and the translator (`CallRecorder`), and how a meter becomes one priced
`UsageEvent` (`build_event`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..admission import Admission, Gate
from ..config import BackendConfig
from ..errors import ValidationError
from ..events import MAX_COST_USD, MAX_TEXT, MAX_TOKENS, TOKEN_FIELDS, UsageEvent, utcnow
from ..pricing import PriceBook, provider_for
from ..pricing.normalize import ZERO_USAGE, TokenUsage
from ..store.base import Ledger
from ..wire import WireProtocol, protocol_for
from .base import CallMeter

log = logging.getLogger("llmbudget.capture")


def guess_provider(model: str, base_url: str | None, kind: str) -> str:
    """The price-book provider of a call to `base_url`, from its host, then protocol, then model.

    A loopback host is not taken as proof that calls are free: a gateway on 127.0.0.1 (LiteLLM,
    a corporate proxy) may front paid models. Only `local: true` (or `wrap(local=True)`) prices at
    $0; otherwise the provider is guessed from the protocol and model, and an unknown model stays
    `unpriced`.
    """
    provider = str(provider_for(model, base_url, kind))
    if provider == "local":
        provider = str(provider_for(model, None, kind))
    return provider


def call_status(meter: CallMeter, *, http_status: int, interrupted: bool, fallback: bool) -> str:
    """ok | error | interrupted | fallback for a call that reached the provider."""
    if http_status >= 400 or meter.stream_error:
        return "error"
    if interrupted:
        return "interrupted"
    return "fallback" if fallback else "ok"


def build_event(
    meter: CallMeter,
    *,
    event_id: str,
    backend: str,
    provider: str,
    prices: Any,
    local: bool,
    attribution: dict[str, Any],
    http_status: int,
    status: str,
    started: float,
    ttft_ms: float | None,
    source: str,
    upstream_reached: bool = True,
) -> UsageEvent:
    """The call's event: tokens as the provider reported them, estimated only for cut streams, priced.

    A cut stream keeps every count the provider already reported: input reported at the start of a
    stream (Anthropic `message_start`, Gemini's first chunks) is final and used as it is, with its
    cached and cache-write parts. Only what was never reported is estimated: input from the request
    (characters of its text / 4, plus 4 per message), output from the generated text seen so far
    (characters / 4). A reported output count is a snapshot that lags the text streamed after it,
    so the larger of it and the estimate is kept.
    """
    try:
        usage = meter.usage()
    except Exception:  # the normalizers never raise; this guards the request path all the same
        log.exception("usage_unreadable backend=%s", backend)
        usage = None
    reason = None
    if usage is not None:
        usage, reason = trusted_usage(usage, meter)
    if status == "interrupted" and upstream_reached:
        usage = fill_cut_stream(usage, meter)
    tokens: dict[str, Any] = usage.as_dict() if usage is not None else {}
    allowed = None if meter.max_output_tokens is None else meter.max_output_tokens * meter.choices
    if allowed is not None and int(tokens.get("output_tokens") or 0) > allowed:
        # recorded and charged as reported: the provider bills what it produced
        reason = (reason + "; " if reason else "") + (
            f"output_tokens {tokens['output_tokens']} exceeds the {allowed} the request allowed "
            f"(max output {meter.max_output_tokens} x {meter.choices} choice{'s' if meter.choices != 1 else ''}); "
            "charged in full"
        )
    model = meter.model or meter.request_model or ""
    now = utcnow()
    cost: Decimal | None = None
    price_status = "unpriced"
    if prices is not None:
        # priced before the event is built (the same book and rule as `PriceBook.price_event`, without
        # building and validating the event twice on the request path)
        result = prices.cost(
            model, usage or ZERO_USAGE, provider=provider, at=now, local=local or provider == "local"
        )
        cost, price_status = result.cost_usd, result.status
    if cost is not None and cost > MAX_COST_USD:
        reason = (
            reason + "; " if reason else ""
        ) + f"cost ${cost} beyond the bound of ${MAX_COST_USD:,} per call"
        cost, price_status = None, "unpriced"
    fields: dict[str, Any] = dict(
        backend=backend,
        model=model,
        id=event_id,
        timestamp=now,
        provider=provider,
        request_model=meter.request_model,
        **tokens,
        **{k: v for k, v in attribution.items() if k != "tags" and v is not None},
        tags=dict(attribution.get("tags") or {}),
        status=status,
        http_status=http_status,
        streamed=meter.stream,
        duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
        ttft_ms=None if ttft_ms is None else round(ttft_ms, 3),
        source=source,
        cost_usd=cost,
        price_status=price_status,
        reason=reason,
    )
    try:
        return UsageEvent(**fields)
    except ValidationError as e:
        return _salvage(fields, e)


def _clean_text(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    text: str = v.replace("\x00", "\ufffd")[:MAX_TEXT]
    return text.encode("utf-8", "replace").decode("utf-8")


def _salvage(fields: dict[str, Any], error: ValidationError) -> UsageEvent:
    """Record the call anyway: each field the event refused is replaced, and the reason says which."""
    notes: list[str] = []
    for _ in range(len(fields)):
        name = error.field
        notes.append(str(error))
        if name in TOKEN_FIELDS:
            fields[name] = 0
        elif name == "cost_usd":
            fields["cost_usd"], fields["price_status"] = None, "unpriced"
        elif name in ("tags", "units"):
            fields[name] = {}
        elif name in ("duration_ms", "ttft_ms", "http_status", "request_model", "reason", "service_tier"):
            fields[name] = None
        elif name in ("backend", "model", "provider"):
            fields[name] = _clean_text(fields.get(name)) or "unknown"
        elif name in fields:
            fields[name] = _clean_text(fields[name])
        else:
            break
        fields["reason"] = "; ".join(
            filter(None, [fields.get("reason"), f"recorded with a replaced value: {notes[-1]}"])
        )[:MAX_TEXT]
        try:
            return UsageEvent(**fields)
        except ValidationError as e:
            error = e
    raise error


_INT_ONLY = {int}


def trusted_usage(usage: TokenUsage, meter: CallMeter) -> tuple[TokenUsage, str | None]:
    """Replace counts no call can have (negative, over `MAX_TOKENS`, not integers) with what can be trusted.

    Input and output fall back to the estimate from the request and the text seen (as for a cut
    stream); the other counts fall back to 0 and an impossible unit count is dropped. Returns the
    usage and the event's `reason` naming each replaced value and what the upstream reported (None
    when every count was plausible, the usual case: a few comparisons).
    """
    counts = (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.cache_write_1h_tokens,
    )  # the TOKEN_FIELDS
    if (
        not usage.units
        and set(map(type, counts)) == _INT_ONLY
        and min(counts) >= 0
        and max(counts) <= MAX_TOKENS
    ):
        return usage, None  # the usual case: every count a plausible integer
    changes: dict[str, Any] = {}
    notes: list[str] = []
    for name in TOKEN_FIELDS:
        v = getattr(usage, name, 0)
        if type(v) is int and 0 <= v <= MAX_TOKENS:
            continue
        est = {"input_tokens": meter.est_input_tokens, "output_tokens": meter.est_output_tokens}.get(name)
        changes[name] = min(max(int(est()), 0), MAX_TOKENS) if est is not None else 0
        notes.append(f"{name}={_shown(v)} ({'estimated' if est else 'recorded as'} {changes[name]})")
    units = dict(usage.units)
    if units and any(type(v) is not int or not 0 <= v <= MAX_TOKENS for v in units.values()):
        kept = {k: v for k, v in units.items() if type(v) is int and 0 <= v <= MAX_TOKENS}
        notes += [f"units.{k}={_shown(v)} (dropped)" for k, v in units.items() if k not in kept]
        changes["units"] = kept
    if not changes:
        return usage, None
    reason = f"upstream reported impossible counts: {', '.join(notes)} (bound {MAX_TOKENS:,})"
    log.warning("usage_untrusted %s", reason)
    return usage.with_counts(**changes), reason


def _shown(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 30 else text[:12] + f"...({len(text)} digits)"


def fill_cut_stream(usage: TokenUsage | None, meter: CallMeter) -> TokenUsage:
    """A cut stream's usage: what the provider reported, estimates only for what it never reported."""
    est_out = meter.est_output_tokens()
    if usage is None or usage.input_tokens == 0:
        base = usage or ZERO_USAGE
        return base.with_counts(
            input_tokens=meter.est_input_tokens(), output_tokens=max(base.output_tokens, est_out)
        )
    if est_out > usage.output_tokens:
        return usage.with_counts(output_tokens=est_out)
    return usage


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
