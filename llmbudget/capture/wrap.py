"""In-process metering without a proxy: `wrap(client)` for the official OpenAI and Anthropic SDKs.

The client's HTTP transport is wrapped, so every call the SDK makes goes through the same
protocol meters as the proxy and becomes the same `UsageEvent` (`source: sdk`): chat
completions, responses, completions, embeddings, messages (streamed and not, `messages.stream`
included). A stream is metered when its iteration ends, when it is closed, or when it is
abandoned and garbage-collected. With a budget `gate`, the resource methods ask it first and
raise `BudgetExceeded` (or call `fallback`, another client) when it refuses. A sync client asks
the gate's sync face in its own thread (no event loop, no thread of ours); an async client awaits
its async face on the caller's event loop.

    from openai import OpenAI
    from llmbudget import wrap
    client = wrap(OpenAI(), agent="researcher", session="s-42", tags={"project": "alpha"})
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..admission import Admission, CallInfo
from ..config import load_config, resolve_db_url
from ..errors import BudgetExceeded, BudgetUnavailable, ValidationError
from ..events import UsageEvent, new_id
from ..pricing import PriceBook
from ..store import ledger_options, open_ledger
from . import openai as openai_proto
from .base import BadRequest, CallMeter, choice_count, estimate_tokens_from_json, output_limit
from .encoding import decode_body, feed_encoded, stream_decoder
from .protocols import ANTHROPIC_METERED, OPENAI_METERED, MeteredProtocol
from .record import CallRecorder, Target

log = logging.getLogger("llmbudget.wrap")

_ADMISSION_HEADER = "x-llmbudget-admission"
#: settle tasks started from finalizers, kept referenced until done
_pending: set[Any] = set()
#: what a gate offers a sync client: called in the caller's thread, no event loop
_SYNC_FACE = ("admit_sync", "settle_sync", "release_sync")


# ------------------------------------------------------------------ shared state of one wrapped client


class _Recorder:
    """What a wrapped client needs to meter, admit and record its calls."""

    def __init__(
        self,
        *,
        protocol: MeteredProtocol,
        target: Target,
        recorder: CallRecorder,
        attribution: dict[str, Any],
        gate: Any,
    ) -> None:
        self.target = target
        self.protocol = protocol
        self.backend = target.backend
        self.local = target.local
        self.provider_of = target.provider_of
        #: the one path from a finished call to its event (shared with the proxy)
        self.recorder = recorder
        self.attribution = attribution
        self.gate = gate
        self.admissions: dict[str, Admission] = {}
        #: the call of each gated method invocation, by admission key: an SDK retry is admitted again
        self.calls: dict[str, CallInfo] = {}

    def meter_for(self, path: str, method: str, body: bytes) -> CallMeter | None:
        try:
            return self.protocol.make_meter(path, method, body, "")
        except BadRequest:
            return None  # let the provider answer a broken request in its own words

    def event(
        self,
        meter: CallMeter,
        *,
        http_status: int,
        interrupted: bool,
        started: float,
        ttft_ms: float | None,
    ) -> UsageEvent | None:
        """Build and record the call's event, waiting for its audit line as configured; never raises."""
        recorder = self.recorder
        event = recorder.build(
            meter,
            self.target,
            event_id=new_id(),
            attribution=self.attribution,
            http_status=http_status,
            status=None,
            interrupted=interrupted,
            fallback=False,
            started=started,
            ttft_ms=ttft_ms,
        )
        if event is not None:
            recorder.record(event)
            recorder.durable_sync()  # storage.durability: fsync; a no-op otherwise
        return event


class _Call:
    """One metered HTTP exchange: feeds the meter from the response stream and records exactly once."""

    def __init__(
        self,
        rec: _Recorder,
        meter: CallMeter,
        admission: Admission | None,
        status: int,
        encoding: str | None,
        streamed: bool,
    ) -> None:
        self.rec = rec
        self.meter = meter
        self.admission = admission
        self.status = status
        self.decoder = stream_decoder(encoding)
        self.encoding = encoding
        self.streamed = streamed
        self.started = time.perf_counter()
        self.ttft: float | None = None
        self.body: list[bytes] = []
        self.done = False
        self.event: UsageEvent | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self.ttft is None:
            self.ttft = (time.perf_counter() - self.started) * 1000.0
        if not self.streamed:
            self.body.append(chunk)
            return chunk
        if self.decoder is None:
            return self.meter.feed(chunk)
        return feed_encoded(self.meter, self.decoder, chunk)

    def tail(self) -> bytes:
        return self.meter.end() if self.streamed and self.decoder is None else b""

    def finish(self, *, cut: bool) -> UsageEvent | None:
        if self.done:
            return None
        self.done = True
        if not self.streamed and self.status < 400:
            self.meter.read_body(decode_body(b"".join(self.body), self.encoding))
        elif self.streamed and cut:
            self.meter.end()
        # closed early but after the protocol's end marker (SDKs stop reading at `[DONE]`): complete
        interrupted = self.status < 400 and not self.meter.complete
        self.event = self.rec.event(
            self.meter,
            http_status=self.status,
            interrupted=interrupted,
            started=self.started,
            ttft_ms=self.ttft if self.streamed else None,
        )
        return self.event


# ------------------------------------------------------------------ response streams


def _stream_classes(mod: Any) -> tuple[type, type]:
    return mod.SyncByteStream, mod.AsyncByteStream


def _make_sync_stream(base: type) -> type:
    class MeteredStream(base):  # type: ignore[misc]
        def __init__(self, inner: Any, call: _Call) -> None:
            self._inner = inner
            self._call = call

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._inner:
                out = self._call.feed(chunk)
                if out:
                    yield out
            tail = self._call.tail()
            if tail:
                yield tail
            self._finish(cut=False)

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._finish(cut=True)

        def _finish(self, *, cut: bool) -> None:
            ev = self._call.finish(cut=cut)
            adm = self._call.admission
            if ev is not None and adm is not None:
                self._call.rec.recorder.settle_later(adm, ev)  # the gate's sync face, in this thread

        def __del__(self) -> None:  # abandoned without close: still metered
            if not self._call.done:
                self._finish(cut=True)

    return MeteredStream


def _make_async_stream(base: type) -> type:
    class AsyncMeteredStream(base):  # type: ignore[misc]
        def __init__(self, inner: Any, call: _Call) -> None:
            self._inner = inner
            self._call = call

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._inner:
                out = self._call.feed(chunk)
                if out:
                    yield out
            tail = self._call.tail()
            if tail:
                yield tail
            await self._finish(cut=False)

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                await self._finish(cut=True)

        async def _finish(self, *, cut: bool) -> None:
            ev = self._call.finish(cut=cut)
            adm = self._call.admission
            if ev is not None and adm is not None:
                await self._call.rec.recorder.settle(adm, ev)

        def __del__(self) -> None:
            if not self._call.done:
                self._call.finish(cut=True)  # recording is synchronous; settling needs the loop
                rec, adm, ev = self._call.rec, self._call.admission, self._call.event
                if ev is not None and adm is not None and rec.gate is not None:
                    try:
                        loop = asyncio.get_running_loop()
                    except RuntimeError:
                        log.warning("wrap_settle_skipped id=%s reason=no_event_loop", ev.id)
                        return
                    task = loop.create_task(rec.recorder.settle(adm, ev))
                    _pending.add(task)
                    task.add_done_callback(_pending.discard)

    return AsyncMeteredStream


# ------------------------------------------------------------------ transports


def _prepare(rec: _Recorder, request: Any) -> tuple[Any, CallMeter | None, Admission | None, CallInfo | None]:
    """(request to send, meter, admission of a first attempt, call to admit again for a retry)."""
    admission_key = request.headers.get(_ADMISSION_HEADER)
    admission = rec.admissions.pop(admission_key, None) if admission_key else None
    # the SDK sends the same headers again when it retries: the first attempt's admission is used
    # up (settled or released), so the retry is a call of its own, admitted and settled again
    retry = rec.calls.get(admission_key) if admission_key and admission is None else None
    meter = (
        rec.meter_for(request.url.path, request.method, request.content) if request.method == "POST" else None
    )
    if meter is None and admission_key is None:
        return request, None, None, None
    headers = [
        (k, v)
        for k, v in request.headers.multi_items()
        if k.lower() not in (_ADMISSION_HEADER, "content-length")
    ]
    body = request.content
    if meter is not None:
        body = meter.body
        # usage must be readable: ask for an uncompressed answer
        headers = [(k, "identity" if k.lower() == "accept-encoding" else v) for k, v in headers]
    new = type(request)(
        request.method, request.url, headers=headers, content=body, extensions=request.extensions
    )
    return new, meter, admission, retry


_REFUSED_HEADER = "x-llmbudget-refused"


def _refusal_response(
    rec: _Recorder, mod: Any, request: Any, admission: Admission | None, error: Exception | None
) -> Any:
    """A refused retry, answered as the provider would (the SDK raises, and does not retry it)."""
    if error is not None:
        status, message, code = 503, str(error), "budget_check_failed"
    else:
        assert admission is not None
        status = admission.status or 429
        message = admission.message or admission.notice or "budget exhausted"
        code = "budget_exceeded"
    headers = {"content-type": "application/json", "x-should-retry": "false", _REFUSED_HEADER: str(status)}
    if admission is not None and admission.retry_after_s is not None:
        headers["retry-after"] = str(int(admission.retry_after_s))
    return mod.Response(
        status, headers=headers, content=rec.protocol.error_bytes(status, message, code), request=request
    )


def _unrefused(e: BaseException) -> BaseException:
    """The SDK's error for a retry the gate refused, as the `BudgetExceeded` a first attempt raises."""
    response = getattr(e, "response", None)
    status = getattr(response, "headers", {}).get(_REFUSED_HEADER) if response is not None else None
    if status is None:
        return e
    try:
        body = response.json()  # type: ignore[union-attr]
        err = body.get("error") or {}
        message = err.get("message") if isinstance(err, dict) else None
    except Exception:
        message = None
    if status == "503":
        return BudgetUnavailable(message or "budget unavailable")
    retry = response.headers.get("retry-after")  # type: ignore[union-attr]
    return BudgetExceeded(message or "budget exhausted", retry_after_s=int(retry) if retry else None)


def _wrap_response(
    rec: _Recorder,
    request: Any,
    response: Any,
    meter: CallMeter,
    admission: Admission | None,
    stream_cls: type,
) -> Any:
    ctype = response.headers.get("content-type", "")
    streamed = response.status_code < 400 and (meter.stream or ctype.startswith("text/event-stream"))
    call = _Call(
        rec, meter, admission, response.status_code, response.headers.get("content-encoding"), streamed
    )
    headers = response.headers
    if streamed and isinstance(meter, openai_proto.OpenAIMeter) and meter.hide_usage:
        headers = [(k, v) for k, v in headers.multi_items() if k.lower() != "content-length"]
    return type(response)(
        response.status_code,
        headers=headers,
        stream=stream_cls(response.stream, call),
        extensions=response.extensions,
        request=request,
    )


class _SyncTransport:
    def __init__(self, inner: Any, rec: _Recorder, mod: Any) -> None:
        self._inner = inner
        self._rec = rec
        self._mod = mod
        self._stream_cls = _make_sync_stream(mod.SyncByteStream)

    def handle_request(self, request: Any) -> Any:
        request, meter, admission, retry = _prepare(self._rec, request)
        if retry is not None and self._rec.gate is not None:
            try:
                admission = self._rec.gate.admit_sync(retry)
            except Exception as e:
                return _refusal_response(self._rec, self._mod, request, None, e)
            if not admission.allowed or admission.fallback_backend:
                if admission.fallback_backend:  # the fallback client serves first attempts only
                    self._rec.gate.release_sync(admission)
                return _refusal_response(self._rec, self._mod, request, admission, None)
        if meter is None:
            return self._inner.handle_request(request)
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            if admission is not None and self._rec.gate is not None:
                self._rec.gate.release_sync(admission)
            raise
        return _wrap_response(self._rec, request, response, meter, admission, self._stream_cls)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _AsyncTransport:
    def __init__(self, inner: Any, rec: _Recorder, mod: Any) -> None:
        self._inner = inner
        self._rec = rec
        self._mod = mod
        self._stream_cls = _make_async_stream(mod.AsyncByteStream)

    async def handle_async_request(self, request: Any) -> Any:
        request, meter, admission, retry = _prepare(self._rec, request)
        if retry is not None and self._rec.gate is not None:
            try:
                admission = await self._rec.gate.admit(retry)
            except Exception as e:
                return _refusal_response(self._rec, self._mod, request, None, e)
            if not admission.allowed or admission.fallback_backend:
                if admission.fallback_backend:
                    await self._rec.gate.release(admission)
                return _refusal_response(self._rec, self._mod, request, admission, None)
        if meter is None:
            return await self._inner.handle_async_request(request)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            if admission is not None and self._rec.gate is not None:
                await self._rec.gate.release(admission)
            raise
        return _wrap_response(self._rec, request, response, meter, admission, self._stream_cls)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


# ------------------------------------------------------------------ gate at the resource methods


def _call_info(rec: _Recorder, kwargs: dict[str, Any], method: str) -> CallInfo:
    model = kwargs.get("model")
    model = model if isinstance(model, str) else ""
    # the SDKs' NOT_GIVEN / omit sentinels mean "not set"
    given = {k: v for k, v in kwargs.items() if type(v).__name__ not in ("NotGiven", "Omit")}
    try:
        if method == "responses":
            max_out = output_limit(given, "max_output_tokens")
            choices = 1
        else:
            max_out = output_limit(given, "max_completion_tokens", "max_tokens")
            choices = (
                choice_count(given, "n", "best_of") if method == "completions" else choice_count(given, "n")
            )
    except BadRequest as e:
        field, _, why = str(e).partition(": ")
        raise ValidationError(field, why) from None
    text = {
        k: v
        for k, v in kwargs.items()
        if k in ("messages", "input", "prompt", "system", "instructions", "tools")
    }
    attribution = {k: v for k, v in rec.attribution.items() if k != "tags"}
    return CallInfo(
        backend=rec.backend,
        protocol=rec.protocol.name,
        provider=rec.provider_of(model),
        model=model,
        est_input_tokens=estimate_tokens_from_json(text),
        max_output_tokens=max_out,
        choices=choices,
        # the tier a call asks for, as the proxy reads it from the body
        service_tier=rec.protocol.requested_tier(given),
        local=rec.local,
        streamed=kwargs.get("stream") is True or method == "stream",
        **attribution,
        tags=dict(rec.attribution.get("tags") or {}),
    )


def _refused(admission: Admission) -> BudgetExceeded:
    return BudgetExceeded(
        admission.message or admission.notice or "budget exhausted", retry_after_s=admission.retry_after_s
    )


def _with_admission(
    rec: _Recorder, admission: Admission, kwargs: dict[str, Any], call: CallInfo
) -> tuple[str, dict[str, Any]]:
    key = new_id()
    rec.admissions[key] = admission
    if len(rec.calls) > 10_000:  # sync `messages.stream` managers never say when they are done
        for old in list(rec.calls)[:5_000]:
            rec.calls.pop(old, None)
    rec.calls[key] = call
    extra = dict(kwargs.get("extra_headers") or {})
    extra[_ADMISSION_HEADER] = key
    return key, {**kwargs, "extra_headers": extra}


def _done(rec: _Recorder, key: str) -> None:
    """The method returned or raised: no more attempts of this call."""
    rec.calls.pop(key, None)
    leftover = rec.admissions.pop(key, None)  # never sent (the SDK failed before its transport)
    if leftover is not None and rec.gate is not None and leftover.reservation_id:
        rec.gate.release_sync(leftover)


def _gate_sync(rec: _Recorder, original: Any, name: str, fallback: Any, path: tuple[str, ...]) -> Any:
    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        call = _call_info(rec, kwargs, name)
        admission: Admission = rec.gate.admit_sync(call)
        if not admission.allowed:
            raise _refused(admission)
        if admission.fallback_backend:
            if fallback is None:
                raise BudgetExceeded(
                    admission.notice or admission.message or "budget exhausted",
                    retry_after_s=admission.retry_after_s,
                )
            rec.gate.release_sync(admission)
            if admission.fallback_model:
                kwargs = {**kwargs, "model": admission.fallback_model}
            return _resolve(fallback, path)(*args, **kwargs)
        key, kwargs = _with_admission(rec, admission, kwargs, call)
        if name == "stream":  # a context manager: the request goes out on __enter__, after we return
            return original(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        except Exception as e:
            raise _unrefused(e) from e
        finally:
            _done(rec, key)

    return method


def _gate_async(rec: _Recorder, original: Any, name: str, fallback: Any, path: tuple[str, ...]) -> Any:
    @functools.wraps(original)
    async def method(*args: Any, **kwargs: Any) -> Any:
        call = _call_info(rec, kwargs, name)
        admission: Admission = await rec.gate.admit(call)
        if not admission.allowed:
            raise _refused(admission)
        if admission.fallback_backend:
            if fallback is None:
                raise BudgetExceeded(
                    admission.notice or admission.message or "budget exhausted",
                    retry_after_s=admission.retry_after_s,
                )
            await rec.gate.release(admission)
            if admission.fallback_model:
                kwargs = {**kwargs, "model": admission.fallback_model}
            return await _resolve(fallback, path)(*args, **kwargs)
        key, kwargs = _with_admission(rec, admission, kwargs, call)
        try:
            return await original(*args, **kwargs)
        except Exception as e:
            raise _unrefused(e) from e
        finally:
            rec.calls.pop(key, None)
            leftover = rec.admissions.pop(key, None)
            if leftover is not None and leftover.reservation_id:
                await rec.gate.release(leftover)

    return method


class _GatedAsyncStream:
    """`AsyncAnthropic.messages.stream(...)` is a plain call returning an async context manager: the
    gate is asked on `async with`, inside the caller's event loop."""

    def __init__(
        self,
        rec: _Recorder,
        original: Any,
        fallback: Any,
        path: tuple[str, ...],
        args: Any,
        kwargs: dict[str, Any],
    ) -> None:
        self._rec, self._original, self._fallback, self._path = rec, original, fallback, path
        self._args, self._kwargs = args, kwargs
        self._inner: Any = None

    async def __aenter__(self) -> Any:
        rec, kwargs = self._rec, self._kwargs
        call = _call_info(rec, kwargs, "stream")
        admission: Admission = await rec.gate.admit(call)
        if not admission.allowed:
            raise _refused(admission)
        if admission.fallback_backend:
            if self._fallback is None:
                raise BudgetExceeded(
                    admission.notice or admission.message or "budget exhausted",
                    retry_after_s=admission.retry_after_s,
                )
            await rec.gate.release(admission)
            if admission.fallback_model:
                kwargs = {**kwargs, "model": admission.fallback_model}
            self._inner = _resolve(self._fallback, self._path)(*self._args, **kwargs)
            return await self._inner.__aenter__()
        key, kwargs = _with_admission(rec, admission, kwargs, call)
        self._inner = self._original(*self._args, **kwargs)
        try:
            return await self._inner.__aenter__()
        except Exception as e:
            raise _unrefused(e) from e
        finally:
            rec.calls.pop(key, None)
            leftover = rec.admissions.pop(key, None)
            if leftover is not None and leftover.reservation_id:
                await rec.gate.release(leftover)

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)


def _gate_async_stream(rec: _Recorder, original: Any, name: str, fallback: Any, path: tuple[str, ...]) -> Any:
    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        return _GatedAsyncStream(rec, original, fallback, path, args, kwargs)

    return method


def _resolve(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = getattr(obj, part)
    return obj


_OPENAI_METHODS: list[tuple[tuple[str, ...], str]] = [
    (("chat", "completions", "create"), "chat"),
    (("responses", "create"), "responses"),
    (("completions", "create"), "completions"),
    (("embeddings", "create"), "embeddings"),
]
_ANTHROPIC_METHODS: list[tuple[tuple[str, ...], str]] = [
    (("messages", "create"), "messages"),
    (("messages", "stream"), "stream"),
]
#: the SDK (its top-level module) -> the wire protocol it speaks and its gated resource methods
_SDKS: dict[str, tuple[MeteredProtocol, list[tuple[tuple[str, ...], str]]]] = {
    "openai": (OPENAI_METERED, _OPENAI_METHODS),
    "anthropic": (ANTHROPIC_METERED, _ANTHROPIC_METHODS),
}


# ------------------------------------------------------------------ public API


def wrap(
    client: Any,
    *,
    agent: str | None = None,
    session: str | None = None,
    user: str | None = None,
    team: str | None = None,
    task_id: str | None = None,
    task_type: str | None = None,
    tier: str | None = None,
    tags: dict[str, str] | None = None,
    ledger: Any = None,
    prices: Any = None,
    gate: Any = None,
    backend: str | None = None,
    fallback: Any = None,
    provider: str | None = None,
    local: bool = False,
) -> Any:
    """Meter every call `client` makes (OpenAI/AsyncOpenAI/Anthropic/AsyncAnthropic); returns the same client.

    `ledger` defaults to the configured ledger (config lookup as the CLI), `prices` to its price
    book. `backend` names the events' backend (default `openai` / `anthropic`). With a `gate`, a
    refused call raises `BudgetExceeded` with the notice; a fallback admission calls `fallback`
    (another client, wrap it to meter it too) or raises when none is given. A sync client calls
    the gate's sync face (`admit_sync`, ...) in its own thread, an async client awaits its async
    face on the caller's event loop; `BudgetGate` (`gate_from_config()`) has both.
    """
    module = type(client).__module__.split(".")[0]
    sdk = _SDKS.get(module)
    if sdk is None:
        raise TypeError(f"wrap() takes an openai or anthropic client, not {type(client).__name__}")
    http = getattr(client, "_client", None)
    inner = getattr(http, "_transport", None)
    if http is None or inner is None:
        raise TypeError("this client has no HTTP transport to wrap (unsupported SDK version?)")
    if isinstance(inner, _SyncTransport | _AsyncTransport):
        raise ValueError("this client is already wrapped")
    is_async = hasattr(inner, "handle_async_request")
    if gate is not None and not is_async and not all(callable(getattr(gate, m, None)) for m in _SYNC_FACE):
        raise TypeError(
            f"a {type(client).__name__} client needs a gate with a sync face "
            "(admit_sync, settle_sync, release_sync), such as llmbudget.budget.gate_from_config()"
        )
    if ledger is None or prices is None:
        cfg = load_config()
        if ledger is None:
            ledger = _default_ledger(resolve_db_url(None, cfg), cfg)
        if prices is None:
            prices = PriceBook.from_config(cfg)
    attribution: dict[str, Any] = {
        # `llmbudget run` sets these for the command it runs
        "agent": agent or os.environ.get("LLMBUDGET_AGENT") or None,
        "session": session or os.environ.get("LLMBUDGET_SESSION") or None,
        "user": user,
        "team": team,
        "task_id": task_id,
        "task_type": task_type,
        "tier": tier,
        "tags": dict(tags or {}),
    }
    base_url = str(getattr(client, "base_url", ""))
    protocol, methods = sdk
    rec = _Recorder(
        protocol=protocol,
        target=Target(
            backend=backend or module, protocol=protocol, base_url=base_url, provider=provider, local=local
        ),
        recorder=CallRecorder(ledger, prices, gate, source="sdk"),
        attribution=attribution,
        gate=gate,
    )
    mod = sys.modules[type(inner).__module__.split(".")[0]]
    http._transport = (_AsyncTransport if is_async else _SyncTransport)(inner, rec, mod)
    if gate is not None:
        for path, name in methods:
            resource = _resolve(client, path[:-1])
            original = getattr(resource, path[-1])
            if not is_async:
                gated = _gate_sync
            elif name == "stream":  # a plain method returning an async context manager
                gated = _gate_async_stream
            else:
                gated = _gate_async
            wrapped = gated(rec, original, name, fallback, path)
            setattr(resource, path[-1], wrapped)
    return client


_ledgers: dict[str, Any] = {}
_ledgers_lock = threading.Lock()


def _default_ledger(url: str, cfg: Any) -> Any:
    """One ledger per URL per process, shared by every wrapped client (closed at exit by the store)."""
    with _ledgers_lock:
        if url not in _ledgers:
            _ledgers[url] = open_ledger(url, **ledger_options(cfg))
        return _ledgers[url]
