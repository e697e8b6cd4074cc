"""A simulated LLM provider for the demo: OpenAI chat completions and Anthropic messages on the real wire formats.

It runs an aiohttp server on 127.0.0.1 (a free port) in its own thread and event loop. Paths:
`/openai/v1/chat/completions`, `/anthropic/v1/messages` and `/local/v1/chat/completions` (a local
model, as Ollama serves it). Usage is derived from the request: input tokens from the text (or the
`x-sim-input-tokens` header the demo agents send), output tokens from `max_tokens`. Anthropic
answers carry the unified rate-limit headers of a subscription account whose 5-hour window fills
up as the demo runs, so the quota panel has an account near its limit.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web

WORDS = [
    "the",
    "plan",
    "looks",
    "sound",
    "so",
    "I",
    "will",
    "refactor",
    "the",
    "parser",
    "add",
    "tests",
    "and",
    "update",
    "the",
    "docs",
]


class SimulatedUpstream:
    """The demo's provider. `start()` returns once it listens; `url` is its base URL."""

    def __init__(self, *, five_hour_start: float = 0.86, five_hour_step: float = 0.002) -> None:
        self.url = ""
        self.calls = 0
        self._five_hour = five_hour_start
        self._step = five_hour_step
        self._started = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._rng = random.Random(42)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SimulatedUpstream:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._serve())
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="llmbudget-demo-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the simulated upstream did not start")
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/v1/chat/completions", self.openai_chat)
        app.router.add_post("/local/v1/chat/completions", self.openai_chat)
        app.router.add_post("/anthropic/v1/messages", self.anthropic_messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # ------------------------------------------------------------------ usage
    def _tokens(self, request: web.Request, body: dict[str, Any], messages: list[Any]) -> tuple[int, int]:
        hint = request.headers.get("x-sim-input-tokens", "")
        input_tokens = int(hint) if hint.isdigit() else 4 * len(messages) + len(json.dumps(messages)) // 4
        cap = body.get("max_tokens") or body.get("max_completion_tokens") or 512
        output_tokens = max(1, min(int(cap), self._rng.randint(int(cap) // 3 + 1, int(cap))))
        return input_tokens, output_tokens

    def _text(self, n: int) -> list[str]:
        return [self._rng.choice(WORDS) + " " for _ in range(max(1, min(n, 24)))]

    # ------------------------------------------------------------------ OpenAI
    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        await asyncio.sleep(self._rng.uniform(0.02, 0.08))  # a model thinks
        model = str(body.get("model") or "gpt-4o-mini")
        inp, out = self._tokens(request, body, list(body.get("messages") or []))
        cached = (inp // 2) // 128 * 128 if inp > 2048 else 0
        usage = {
            "prompt_tokens": inp,
            "completion_tokens": out,
            "total_tokens": inp + out,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        words = self._text(out)
        headers = {
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": str(max(0, 10000 - self.calls)),
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "1990000",
            "x-ratelimit-reset-tokens": "1m2.5s",
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_demo",
                },
                headers=headers,
            )
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        frames = [chunk({"role": "assistant", "content": ""}, None)]
        frames += [chunk({"content": w}, None) for w in words]
        frames.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append({**chunk({}, None), "choices": [], "usage": usage})
        for f in frames:
            await resp.write(b"data: " + json.dumps(f).encode() + b"\n\n")
            await asyncio.sleep(0.005)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ Anthropic
    def _unified_headers(self) -> dict[str, str]:
        """A Max-plan account filling its 5-hour window: allowed_warning once past 80%."""
        self._five_hour = min(0.99, self._five_hour + self._step)
        now = int(time.time())
        status = "allowed_warning" if self._five_hour >= 0.8 else "allowed"
        return {
            "anthropic-ratelimit-unified-status": status,
            "anthropic-ratelimit-unified-5h-status": status,
            "anthropic-ratelimit-unified-5h-utilization": f"{self._five_hour:.3f}",
            "anthropic-ratelimit-unified-5h-reset": str(now + 47 * 60),
            "anthropic-ratelimit-unified-7d-status": "allowed",
            "anthropic-ratelimit-unified-7d-utilization": "0.41",
            "anthropic-ratelimit-unified-7d-reset": str(now + 3 * 86400 + 5 * 3600),
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-reset": str(now + 47 * 60),
            "anthropic-ratelimit-unified-fallback-percentage": "0.5",
            "anthropic-ratelimit-unified-overage-status": "rejected",
        }

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        await asyncio.sleep(self._rng.uniform(0.03, 0.1))
        model = str(body.get("model") or "claude-sonnet-4-5")
        inp, out = self._tokens(request, body, list(body.get("messages") or []))
        cache_read = (inp * 3) // 4 if inp > 2048 else 0
        cache_write = min(512, inp - cache_read) if inp > 2048 else 0
        usage = {
            "input_tokens": inp - cache_read - cache_write,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "output_tokens": out,
            "service_tier": "standard",
        }
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        words = self._text(out)
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}", **self._unified_headers()}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": "".join(words)}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
                headers=headers,
            )
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event, data in _anthropic_stream(mid, model, usage, words):
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp


def _anthropic_stream(
    mid: str, model: str, usage: dict[str, Any], words: list[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    start_usage = {**usage, "output_tokens": 1}
    yield (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        },
    )
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for w in words:
        yield (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
        )
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}
