"""A fake upstream that speaks the OpenAI, Anthropic and Gemini wire protocols as the providers document them.

It runs a real aiohttp server on 127.0.0.1 (port 0) in a thread with its own event loop. Every
answer carries the usage constants below (cache and reasoning tokens included) and the
rate-limit headers of its provider family, so tests can compare what llmbudget recorded with
what the "provider" reported.

Behaviour is chosen per request by the `x-fake` header (forwarded by the proxy like any header):
`error` (the provider's error shape with 429 + rate-limit headers), `garbage` (200 with broken
SSE/JSON), `cut` (stream closed mid-way, no terminator), `hold` (first chunk, then wait until
the test calls `release()`), `slow` (a pause between chunks), `gzip` (OpenAI chat compressed
whatever the client's Accept-Encoding said). `x-fake-remaining: N` sets the OpenAI
`x-ratelimit-remaining-requests` header of the answer (quota readings from a burst).
`GET /v1/models` with `x-fake-set-cookie: VALUE` answers with that `Set-Cookie`.

What the "provider" reports can be changed per request too: `x-fake-usage: <JSON object>` replaces
the usage object of the answer (Anthropic `usage`, also in `message_start`; OpenAI `usage`; Gemini
`usageMetadata`), `x-fake-model` the model answered, `x-fake-service-tier` adds OpenAI's top-level
`service_tier` to the answer and every chunk, `x-fake-web-searches: N` and `x-fake-file-searches: N`
add N `web_search_call` / `file_search_call` items to a Responses answer, and `x-fake-cut-after: N` drops the connection after the first N
chunks of a stream (N=1: right after Anthropic's `message_start`). `x-fake-fail-first: TOKEN`
answers the first request carrying that token with a 500 in the provider's error shape (the
SDKs retry it) and the later ones normally.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

# ------------------------------------------------------------------ what each "provider" reports

OPENAI_CHAT_MODEL = "gpt-4o-mini-2024-07-18"
OPENAI_CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 128,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
OPENAI_RESPONSES_MODEL = "o4-mini-2025-04-16"
OPENAI_RESPONSES_USAGE = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 512},
    "output_tokens": 700,
    "output_tokens_details": {"reasoning_tokens": 448},
    "total_tokens": 2700,
}
OPENAI_COMPLETIONS_MODEL = "gpt-3.5-turbo-instruct"
OPENAI_COMPLETIONS_USAGE = {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}
OPENAI_EMBEDDINGS_MODEL = "text-embedding-3-small"
OPENAI_EMBEDDINGS_USAGE = {"prompt_tokens": 8, "total_tokens": 8}
ANTHROPIC_MODEL = "claude-sonnet-4-20250514"
ANTHROPIC_USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 200,
    "cache_read_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 50,
    "server_tool_use": {"web_search_requests": 0},
    "service_tier": "standard",
}
GEMINI_MODEL = "gemini-2.5-flash"
GEMINI_USAGE = {
    "promptTokenCount": 1500,
    "candidatesTokenCount": 200,
    "totalTokenCount": 1800,
    "cachedContentTokenCount": 1024,
    "thoughtsTokenCount": 100,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1500}],
}

OPENAI_RATE_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "200000",
    "x-ratelimit-remaining-tokens": "199000",
    "x-ratelimit-reset-tokens": "1m2.5s",
}
ANTHROPIC_RATE_HEADERS = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-utilization": "0.42",
    "anthropic-ratelimit-unified-5h-reset": str(int(time.time()) + 3600),
    "anthropic-ratelimit-unified-7d-utilization": "0.1",
    "anthropic-ratelimit-unified-7d-reset": str(int(time.time()) + 86400),
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:00Z",
}
GEMINI_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
GEMINI_QUOTA_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
TEXT = ["Hel", "lo", " from", " the", " fake", " upstream", "."]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


class FakeUpstream:
    """The fake provider server. `url` is its base URL; `requests` lists what it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        #: tokens of `x-fake-fail-first` already failed once
        self.failed_first: set[str] = set()
        self.url = ""
        self._hold = threading.Event()
        self.held = threading.Event()  # set when a `hold` stream has sent its first chunk
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-upstream")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._hold.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def release(self) -> None:
        """Let a `hold` stream send the rest."""
        self._hold.set()

    # ---------------------------------------------------------------- routing
    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                # the path exactly as it arrived, percent-encoding kept
                "raw_path": request.rel_url.raw_path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "json": body,
                "raw": raw,
            }
        )
        mode = request.headers.get("x-fake", "")
        path = request.path
        token = request.headers.get("x-fake-fail-first")
        if token and token not in self.failed_first:
            self.failed_first.add(token)
            if path.endswith("/messages"):
                err: dict[str, Any] = {
                    "type": "error",
                    "error": {"type": "api_error", "message": "fake failure"},
                }
            else:
                err = {"error": {"message": "fake failure", "type": "server_error", "code": None}}
            return web.json_response(err, status=500)
        remaining = request.headers.get("x-fake-remaining")
        if remaining is not None:
            return await self.openai_remaining(request, body or {}, remaining)
        if path.endswith("/v1/models") and request.method == "GET":
            cookie = request.headers.get("x-fake-set-cookie")  # a provider's edge setting a cookie
            return web.json_response(
                {"object": "list", "data": [{"id": OPENAI_CHAT_MODEL, "object": "model"}]},
                headers={**OPENAI_RATE_HEADERS, **({"Set-Cookie": cookie} if cookie else {})},
            )
        if path.endswith("/messages/count_tokens"):
            return web.json_response({"input_tokens": 42})
        if path.endswith("/messages"):
            return await self.anthropic(request, body or {}, mode)
        if ":generateContent" in path or ":streamGenerateContent" in path:
            return await self.gemini(request, body or {}, mode)
        if path.endswith(("/chat/completions", "/completions", "/responses", "/embeddings")):
            return await self.openai(request, body or {}, mode)
        return web.json_response({"error": "no such route"}, status=404)

    async def _stream(
        self, request: web.Request, chunks: list[bytes], mode: str, ctype: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        cut_after = request.headers.get("x-fake-cut-after")
        if cut_after is not None:
            resp = web.StreamResponse(
                status=200, headers={"Content-Type": ctype, "Cache-Control": "no-cache", **headers}
            )
            await resp.prepare(request)
            for chunk in chunks[: int(cut_after)]:
                await resp.write(chunk)
            await asyncio.sleep(0.05)  # let the chunks reach the client before the connection drops
            assert request.transport is not None
            request.transport.close()
            return resp
        if mode == "gzip":  # an upstream that compresses whatever the client asked for
            headers = {**headers, "Content-Encoding": "gzip"}
            comp = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
            chunks = [comp.compress(c) + comp.flush(zlib.Z_SYNC_FLUSH) for c in chunks] + [comp.flush()]
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": ctype, "Cache-Control": "no-cache", **headers}
        )
        await resp.prepare(request)
        for i, chunk in enumerate(chunks):
            await resp.write(chunk)
            if mode == "hold" and i == 0:
                self.held.set()
                await asyncio.get_running_loop().run_in_executor(None, self._hold.wait, 10)
            elif mode == "slow":
                await asyncio.sleep(0.05)
            elif mode == "cut" and i == len(chunks) // 2:
                # the provider's connection drops: no terminating chunk, no end event
                assert request.transport is not None
                request.transport.close()
                return resp
        await resp.write_eof()
        return resp

    # ---------------------------------------------------------------- OpenAI
    async def openai_remaining(
        self, request: web.Request, body: dict[str, Any], remaining: str
    ) -> web.StreamResponse:
        """An embeddings answer whose rate-limit headers say `remaining` requests are left."""
        return web.json_response(
            {
                "object": "list",
                "model": OPENAI_EMBEDDINGS_MODEL,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": OPENAI_EMBEDDINGS_USAGE,
            },
            headers={**OPENAI_RATE_HEADERS, "x-ratelimit-remaining-requests": remaining},
        )

    async def openai(self, request: web.Request, body: dict[str, Any], mode: str) -> web.StreamResponse:
        path = request.path
        if mode == "error":
            return web.json_response(
                {
                    "error": {
                        "message": "Rate limit reached for gpt-4o-mini",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
                status=429,
                headers={
                    **OPENAI_RATE_HEADERS,
                    "x-ratelimit-remaining-requests": "0",
                    "retry-after": "20",
                    "x-request-id": "req_fake",
                },
            )
        if mode == "garbage":
            if body.get("stream"):
                return await self._stream(
                    request,
                    [b"data: {not json\n\n", b"\x00\xffgarbage\n\n"],
                    "",
                    "text/event-stream",
                    OPENAI_RATE_HEADERS,
                )
            return web.Response(
                body=b"<html>upstream proxy error</html>", status=200, content_type="text/html"
            )
        created = int(time.time())
        if path.endswith("/embeddings"):
            return web.json_response(
                {
                    "object": "list",
                    "model": OPENAI_EMBEDDINGS_MODEL,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "usage": OPENAI_EMBEDDINGS_USAGE,
                },
                headers=OPENAI_RATE_HEADERS,
            )
        if path.endswith("/responses"):
            return await self.openai_responses(request, body, mode, created)
        chat = path.endswith("/chat/completions")
        model = _model(request, OPENAI_CHAT_MODEL if chat else OPENAI_COMPLETIONS_MODEL)
        usage = _usage(request, OPENAI_CHAT_USAGE if chat else OPENAI_COMPLETIONS_USAGE)
        tier = _tier(request)
        if not body.get("stream"):
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(TEXT), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": "".join(TEXT), "logprobs": None, "finish_reason": "stop"}
                obj = "text_completion"
            answer = {
                "id": "chatcmpl-fake",
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
                "system_fingerprint": "fp_fake",
                **tier,
            }
            if mode == "gzip":
                return web.Response(
                    body=gzip.compress(json.dumps(answer).encode()),
                    content_type="application/json",
                    headers={**OPENAI_RATE_HEADERS, "Content-Encoding": "gzip"},
                )
            return web.json_response(answer, headers=OPENAI_RATE_HEADERS)
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include else {}
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            **tier,
        }
        chunks = []
        for i, piece in enumerate(TEXT):
            if chat:
                delta: dict[str, Any] = {"content": piece}
                if i == 0:
                    delta = {"role": "assistant", "content": piece}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
            chunks.append(b"data: " + json.dumps({**base, "choices": [choice], **extra}).encode() + b"\n\n")
        last = (
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
        )
        chunks.append(b"data: " + json.dumps({**base, "choices": [last], **extra}).encode() + b"\n\n")
        if include:
            chunks.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        chunks.append(b"data: [DONE]\n\n")
        return await self._stream(
            request, chunks, mode, "text/event-stream; charset=utf-8", OPENAI_RATE_HEADERS
        )

    async def openai_responses(
        self, request: web.Request, body: dict[str, Any], mode: str, created: int
    ) -> web.StreamResponse:
        text = "".join(TEXT)
        item = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        searches = [
            {"type": "web_search_call", "id": f"ws_fake{i}", "status": "completed"}
            for i in range(int(request.headers.get("x-fake-web-searches", "0")))
        ] + [
            {"type": "file_search_call", "id": f"fs_fake{i}", "status": "completed", "queries": ["q"]}
            for i in range(int(request.headers.get("x-fake-file-searches", "0")))
        ]
        response = {
            "id": "resp_fake",
            "object": "response",
            "created_at": created,
            "status": "completed",
            "model": _model(request, OPENAI_RESPONSES_MODEL),
            "output": [*searches, item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": _usage(request, OPENAI_RESPONSES_USAGE),
            **_tier(request),
        }
        if not body.get("stream"):
            return web.json_response(response, headers=OPENAI_RATE_HEADERS)
        seq = iter(range(1000))
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        chunks = [
            _sse(
                {"type": "response.created", "sequence_number": next(seq), "response": started},
                "response.created",
            )
        ]
        for piece in TEXT:
            chunks.append(
                _sse(
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": "msg_fake",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                    },
                    "response.output_text.delta",
                )
            )
        chunks.append(
            _sse(
                {"type": "response.completed", "sequence_number": next(seq), "response": response},
                "response.completed",
            )
        )
        return await self._stream(
            request, chunks, mode, "text/event-stream; charset=utf-8", OPENAI_RATE_HEADERS
        )

    # ---------------------------------------------------------------- Anthropic
    async def anthropic(self, request: web.Request, body: dict[str, Any], mode: str) -> web.StreamResponse:
        # Anthropic names every call: `request-id` on the answer (Claude Code logs it as requestId)
        rid = {"request-id": "req_" + uuid.uuid4().hex[:24]}
        if mode == "error":
            return web.json_response(
                {
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": "Number of requests has exceeded your rate limit",
                    },
                    "request_id": "req_fake",
                },
                status=429,
                headers={
                    **ANTHROPIC_RATE_HEADERS,
                    **rid,
                    "retry-after": "30",
                    "anthropic-ratelimit-unified-status": "rejected",
                },
            )
        msg = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": _model(request, ANTHROPIC_MODEL),
            "content": [{"type": "text", "text": "".join(TEXT)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": _usage(request, ANTHROPIC_USAGE),
        }
        if not body.get("stream"):
            return web.json_response(msg, headers={**ANTHROPIC_RATE_HEADERS, **rid})
        start_usage = dict(msg["usage"])
        start_usage["output_tokens"] = 1
        chunks = [
            _sse(
                {
                    "type": "message_start",
                    "message": {**msg, "content": [], "stop_reason": None, "usage": start_usage},
                },
                "message_start",
            ),
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            _sse({"type": "ping"}, "ping"),
        ]
        for piece in TEXT:
            chunks.append(
                _sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                    "content_block_delta",
                )
            )
        chunks.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        chunks.append(
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": msg["usage"]["output_tokens"]},
                },
                "message_delta",
            )
        )
        chunks.append(_sse({"type": "message_stop"}, "message_stop"))
        return await self._stream(
            request, chunks, mode, "text/event-stream; charset=utf-8", {**ANTHROPIC_RATE_HEADERS, **rid}
        )

    # ---------------------------------------------------------------- Gemini
    async def gemini(self, request: web.Request, body: dict[str, Any], mode: str) -> web.StreamResponse:
        if mode == "error":
            return web.json_response(
                {
                    "error": {
                        "code": 429,
                        "message": "Resource has been exhausted",
                        "status": "RESOURCE_EXHAUSTED",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                "violations": [
                                    {
                                        "quotaMetric": GEMINI_QUOTA_METRIC,
                                        "quotaId": GEMINI_QUOTA_ID,
                                        "quotaDimensions": {
                                            "location": "global",
                                            "model": "gemini-2.5-flash",
                                        },
                                        "quotaValue": "10",
                                    }
                                ],
                            },
                            {
                                "@type": "type.googleapis.com/google.rpc.Help",
                                "links": [
                                    {
                                        "description": "Learn more",
                                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                                    }
                                ],
                            },
                            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"},
                        ],
                    }
                },
                status=429,
            )
        model = request.path.rsplit("/", 1)[-1].split(":")[0]
        final_usage = _usage(request, GEMINI_USAGE)

        def chunk(text: str, final: bool) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            usage = dict(final_usage)
            if final:
                cand["finishReason"] = "STOP"
            else:  # early chunks report the prompt only, the way Gemini does
                usage = {
                    k: v
                    for k, v in final_usage.items()
                    if k in ("promptTokenCount", "promptTokensDetails", "cachedContentTokenCount")
                }
                usage["totalTokenCount"] = final_usage.get("promptTokenCount", 0)
            return {
                "candidates": [cand],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": "resp_fake",
            }

        if ":generateContent" in request.path:
            return web.json_response(chunk("".join(TEXT), True))
        parts = [chunk(p, i == len(TEXT) - 1) for i, p in enumerate(TEXT)]
        if request.query.get("alt") == "sse":
            chunks = [b"data: " + json.dumps(p).encode() + b"\r\n\r\n" for p in parts]
            return await self._stream(request, chunks, mode, "text/event-stream", {})
        # the JSON-array form, pretty-printed the way the API sends it
        texts = [json.dumps(p, indent=2) for p in parts]
        chunks = [("[" + texts[0]).encode()] + [("\n,\r\n" + t).encode() for t in texts[1:]] + [b"\n]"]
        return await self._stream(request, chunks, mode, "application/json; charset=UTF-8", {})


def _usage(request: web.Request, default: dict[str, Any]) -> dict[str, Any]:
    """The usage this answer reports: `x-fake-usage` (a JSON object) or the provider's constant."""
    raw = request.headers.get("x-fake-usage")
    return dict(default) if raw is None else dict(json.loads(raw))


def _model(request: web.Request, default: str) -> str:
    return request.headers.get("x-fake-model", default)


def _tier(request: web.Request) -> dict[str, str]:
    tier = request.headers.get("x-fake-service-tier")
    return {} if tier is None else {"service_tier": tier}


async def iter_lines(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Helper for tests reading raw SSE."""
    buf = b""
    async for chunk in stream:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
