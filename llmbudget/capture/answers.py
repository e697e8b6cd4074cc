"""The answer side of a metered call: a buffered answer read whole, a stream passed on chunk by chunk,
both metered and recorded before their last byte goes to the client.

Streams pass chunk by chunk as they arrive (`iter_any()`): the only exception is OpenAI chat when
llmbudget asked for usage on the client's behalf, where a partial SSE event is held until its end
so that the usage-only chunk can be removed (and a stream compressed against our asking is passed
on decompressed, so that chunk can be found).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from typing import Any

import aiohttp

from ..events import UsageEvent
from . import openai
from .asgi import Message, Receive, Send, ctype_of, fmt_cost, send_error
from .encoding import decode_body, feed_encoded, stream_decoder
from .guard import StreamGuard
from .proxy_calls import MeteredCalls
from .request import ProxyRequest
from .upstream import UpstreamResponse

log = logging.getLogger("llmbudget.proxy")


async def buffered_answer(
    proxy: MeteredCalls,
    req: ProxyRequest,
    target: str,
    resp: UpstreamResponse,
    out_headers: list[tuple[bytes, bytes]],
    send: Send,
) -> None:
    meter = req.meter
    assert meter is not None
    try:
        body = await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        await proxy._connect_failed(req, target, send, e, started=True)
        return
    req.upstream_end = time.perf_counter()
    status: str | None = None
    if resp.status >= 400 and req.proto.quota_in_error_body:
        # Gemini's quota is in the error body (QuotaFailure, RetryInfo): parsed later, off this path
        plain = decode_body(body, resp.header("Content-Encoding"))
        proxy.readings.note(target, req.proto, resp, plain[:65536])
    if resp.status < 400:
        plain = decode_body(body, resp.header("Content-Encoding"))
        meter.read_body(plain)
        if not meter.complete and (plain or not body):
            # a 200 whose (readable) body is not the protocol's answer: never passed on as success
            ctype = resp.header("Content-Type") or ""
            req.reason = f"backend {target!r} answered 200 with a body that is not a {req.proto.name} answer"
            log.warning("proxy_unreadable_answer backend=%s path=%s content_type=%s", target, req.path, ctype)
            event = await proxy.record_call(req, target, http_status=502, status="error", interrupted=False)
            await send_error(
                send,
                req.proto,
                502,
                f"{req.reason} (Content-Type {ctype or '(none)'!r})",
                "upstream_bad_answer",
                [(b"x-llmbudget-request-id", req.event_id.encode())],
            )
            if event is not None and req.admission is not None:
                proxy.recorder.settle_later(req.admission, event)
            return
        if not meter.complete:  # an encoding llmbudget cannot read: passed on, usage unknown
            status = "error"
    batched = proxy._inflight > 1
    if batched:
        event = await proxy._record_batched(req, target, http_status=resp.status, status=status)
    else:
        event = proxy._record(
            req, target, http_status=resp.status, status=status, interrupted=False, defer=True
        )
    if event is not None:
        cost = "unpriced" if event.cost_usd is None else fmt_cost(event.cost_usd)
        out_headers.append((b"x-llmbudget-cost-usd", cost.encode()))
    out_headers = [(k, v) for k, v in out_headers if k != b"content-length"]
    out_headers.append((b"content-length", str(len(body)).encode()))
    if event is not None:
        if not batched:
            proxy.recorder.record(event)
        await proxy.recorder.durable()
    await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
    await send({"type": "http.response.body", "body": body})
    if event is not None and req.admission is not None:
        proxy.recorder.settle_later(req.admission, event)


async def streamed_answer(
    proxy: MeteredCalls,
    req: ProxyRequest,
    target: str,
    resp: UpstreamResponse,
    out_headers: list[tuple[bytes, bytes]],
    send: Send,
    receive: Receive | None,
) -> None:
    meter = req.meter
    assert meter is not None
    encoding = resp.header("Content-Encoding")
    decoder = stream_decoder(encoding)
    #: a compressed stream we must filter is decompressed and passed on as identity
    inflate: zlib._Decompress | None = None
    if isinstance(meter, openai.OpenAIMeter) and meter.hide_usage:
        out_headers = [(k, v) for k, v in out_headers if k != b"content-length"]
        if decoder is False:
            meter.hide_usage = False  # an encoding we cannot read: pass it unchanged, usage unknown
        elif decoder is not None:
            # The upstream compressed although we asked for identity. The client did not ask for
            # usage, so it must not see the usage chunk: send it the stream decompressed (every
            # client accepts identity) with that chunk removed.
            inflate, decoder = decoder, None
            out_headers = [(k, v) for k, v in out_headers if k != b"content-encoding"]
    guard: StreamGuard | None = None
    json_array = bool(getattr(meter, "json_array", False))
    broken = StreamGuard.content_type_problem(ctype_of(out_headers).decode("latin-1"), json_array=json_array)
    if broken is not None:
        # not the protocol at all: the client gets the protocol's stream with its error event
        out_headers = [
            (k, v)
            for k, v in out_headers
            if k not in (b"content-type", b"content-length", b"content-encoding")
        ]
        out_headers.append((b"content-type", b"application/json" if json_array else b"text/event-stream"))
    elif decoder is None:  # identity (or decompressed for filtering): every line is checked
        guard = StreamGuard(json_array=json_array)
    await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
    ttft: float | None = None
    interrupted = False
    client_gone = False
    #: the call's event once recorded (before the last byte when the stream ends normally)
    event: UsageEvent | None = None
    recorded = False
    task = asyncio.current_task()

    def outcome(interrupted: bool) -> dict[str, Any]:
        """How the call ended, as its event records it (an error inside the stream is its reason)."""
        return {
            "http_status": resp.status,
            "status": "error" if req.reason else None,
            "interrupted": interrupted,
            "ttft_ms": ttft,
        }

    async def record(*, interrupted: bool) -> UsageEvent | None:
        """Record the call now, before the stream's last byte."""
        return await proxy.record_call(req, target, **outcome(interrupted))

    watcher: asyncio.Future[Message] | None = None
    if receive is not None and task is not None:
        # The client hanging up must stop the copy even while the upstream is silent.
        watcher = asyncio.ensure_future(receive())

        def _on_disconnect(f: asyncio.Future[Message]) -> None:
            nonlocal client_gone
            if not f.cancelled() and f.exception() is None and f.result().get("type") == "http.disconnect":
                client_gone = True
                task.cancel()

        watcher.add_done_callback(_on_disconnect)
    try:
        if broken is None:
            async for chunk in resp.content.iter_any():
                if inflate is not None:
                    chunk = inflate.decompress(chunk)
                if guard is not None:
                    chunk, broken = guard.check(chunk)
                out = meter.feed(chunk) if decoder is None else feed_encoded(meter, decoder, chunk)
                if out:
                    if ttft is None:
                        ttft = (time.perf_counter() - req.started) * 1000.0
                    if meter.complete and not recorded and broken is None and meter.raw_usage is not None:
                        # The end marker ([DONE], message_stop) is in this chunk: an SDK stops
                        # reading there, before the body's last byte, so the call is recorded now.
                        recorded = True
                        event = await record(interrupted=False)
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if broken is not None:
                    break
        req.upstream_end = time.perf_counter()
        tail = b""
        if broken is None:
            rest = inflate.flush() if inflate is not None else b""
            if guard is not None:
                held, broken = guard.check(rest) if rest else (b"", None)
                if broken is None:
                    last, broken = guard.end()
                    held += last
                rest = held
            tail = meter.feed(rest) if rest else b""
        tail += meter.end()
        if broken is not None:
            req.reason = f"backend {target!r} {broken}"
            log.warning("proxy_bad_stream backend=%s path=%s reason=%s", target, req.path, broken)
            tail += (
                req.proto.stream_error(
                    b"application/json" if json_array else b"text/event-stream",
                    req.reason,
                    started=guard is not None and guard.started,
                    code="upstream_bad_stream",
                )
                or b""
            )
        interrupted = not meter.complete and broken is None
        if not recorded:
            recorded = True
            event = await record(interrupted=interrupted)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    except asyncio.CancelledError:
        if not client_gone:
            raise
        meter.end()
        interrupted = not meter.complete  # gone after the end marker: the call completed
        log.info("proxy_client_disconnected backend=%s path=%s", target, req.path)
    except (aiohttp.ClientError, TimeoutError, OSError, zlib.error) as e:
        interrupted = True
        meter.end()
        log.warning("proxy_upstream_cut backend=%s path=%s error=%s", target, req.path, type(e).__name__)
        if not recorded:
            recorded = True
            event = proxy._record(
                req, target, http_status=resp.status, status=None, interrupted=True, ttft_ms=ttft
            )
        # Tell the client in its protocol: an SSE error event (SDKs raise on it), else a cut connection.
        note = req.proto.stream_error(
            ctype_of(out_headers),
            f"the upstream {target!r} closed the stream early ({type(e).__name__})",
        )
        if note is not None:
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": note, "more_body": False})
    finally:
        if watcher is not None and not watcher.done():
            watcher.remove_done_callback(_on_disconnect)
            watcher.cancel()
        if client_gone and task is not None:
            task.uncancel()  # so the rest of this request (recording) runs normally
    if not recorded:  # the client hung up first: no last byte to hold for durability
        event = proxy._record(req, target, **outcome(interrupted))
    if event is not None and req.admission is not None:
        proxy.recorder.settle_later(req.admission, event)
