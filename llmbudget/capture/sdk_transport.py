"""What `wrap()` puts in a client's HTTP transport: each metered exchange goes through the protocol's
meter and `CallRecorder`, as a proxied call does; a stream is metered when its iteration ends, when
it is closed, or when it is abandoned and garbage-collected. A retry the SDK sends again is
admitted again, and refused as the provider would refuse it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..admission import Admission, CallInfo
from ..errors import BudgetExceeded, BudgetUnavailable
from ..events import UsageEvent, new_id
from . import openai as openai_proto
from .base import BadRequest, CallMeter
from .encoding import decode_body, feed_encoded, stream_decoder
from .protocols import MeteredProtocol
from .record import CallRecorder, Target

log = logging.getLogger("llmbudget.wrap")

#: the header that carries a gated call's admission key from its resource method to the transport
ADMISSION_HEADER = "x-llmbudget-admission"
#: settle tasks started from finalizers, kept referenced until done
_pending: set[Any] = set()


class ClientState:
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
        rec: ClientState,
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


def _prepare(
    rec: ClientState, request: Any
) -> tuple[Any, CallMeter | None, Admission | None, CallInfo | None]:
    """(request to send, meter, admission of a first attempt, call to admit again for a retry)."""
    admission_key = request.headers.get(ADMISSION_HEADER)
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
        if k.lower() not in (ADMISSION_HEADER, "content-length")
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
    rec: ClientState, mod: Any, request: Any, admission: Admission | None, error: Exception | None
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


def unrefused(e: BaseException) -> BaseException:
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
    rec: ClientState,
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


class SyncTransport:
    def __init__(self, inner: Any, rec: ClientState, mod: Any) -> None:
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


class AsyncTransport:
    def __init__(self, inner: Any, rec: ClientState, mod: Any) -> None:
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
