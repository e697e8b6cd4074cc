"""Fake provider servers for quota tests: a real aiohttp server on 127.0.0.1 answering with recorded header sets.

Every account points at `http://127.0.0.1:PORT/<scenario>`; the scenario decides the answer
(status, headers, body) or hangs. The server runs on its own thread and event loop so the
CLI under test can call `asyncio.run` itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Answer = tuple[int, dict[str, str], Any]


def _in(seconds: float) -> str:
    return str(int(time.time() + seconds))


def _rfc3339_in(seconds: float, offset: str = "Z") -> str:
    from datetime import UTC, datetime, timedelta, timezone

    t = datetime.now(UTC) + timedelta(seconds=seconds)
    if offset == "Z":
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    sign = 1 if offset[0] == "+" else -1
    hh, mm = offset[1:].split(":")
    tz = timezone(sign * timedelta(hours=int(hh), minutes=int(mm)))
    return t.astimezone(tz).isoformat(timespec="seconds")


ANTHROPIC_OK_BODY = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "."}],
    "stop_reason": "max_tokens",
    "usage": {"input_tokens": 8, "output_tokens": 1},
}
OPENAI_OK_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "."}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
}


def unified(status: str, u5: str, u7: str, **extra: str) -> dict[str, str]:
    h = {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-5h-reset": _in(2 * 3600 + 60),
        "anthropic-ratelimit-unified-5h-utilization": u5,
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-reset": _in(
            3 * 86400 - 1800
        ),  # mid-hour: the countdown never straddles 3d0h
        "anthropic-ratelimit-unified-7d-utilization": u7,
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
        "anthropic-ratelimit-unified-reset": _in(2 * 3600 + 60),
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "request-id": "req_011CRM",
    }
    h.update({f"anthropic-ratelimit-unified-{k.replace('__', '-')}": v for k, v in extra.items()})
    return h


def _gemini_429() -> Answer:
    return (
        429,
        {},
        {
            "error": {
                "code": 429,
                "status": "RESOURCE_EXHAUSTED",
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash-lite"},
                                "quotaValue": "1000",
                            },
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
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"},
                ],
            }
        },
    )


SCENARIOS: dict[str, Callable[[], Answer]] = {
    # Anthropic unified (subscription) windows
    "unified-ok": lambda: (200, unified("allowed", "0.42", "0.50"), ANTHROPIC_OK_BODY),
    "unified-warn": lambda: (200, unified("allowed_warning", "0.30", "0.86"), ANTHROPIC_OK_BODY),
    "unified-rejected": lambda: (
        429,
        {**unified("rejected", "1.0", "0.97"), "retry-after": "7200"},
        {"type": "error", "error": {"type": "rate_limit_error", "message": "limit reached"}},
    ),
    "unified-oi": lambda: (
        200,
        unified("allowed", "0.10", "0.20", **{"7d_oi__utilization": "0.93", "7d_oi__reset": _in(86400)}),
        ANTHROPIC_OK_BODY,
    ),
    # Anthropic API: RFC 3339 resets in Z and offset form
    "api-ok": lambda: (
        200,
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": _rfc3339_in(1),
            "anthropic-ratelimit-tokens-limit": "90000",
            "anthropic-ratelimit-tokens-remaining": "60000",
            "anthropic-ratelimit-tokens-reset": _rfc3339_in(30, "+05:30"),
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "40000",
            "anthropic-ratelimit-input-tokens-reset": _rfc3339_in(5),
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "7999",
            "anthropic-ratelimit-output-tokens-reset": _rfc3339_in(5, "-04:00"),
        },
        ANTHROPIC_OK_BODY,
    ),
    # OpenAI: Go durations
    "openai-ok": lambda: (
        200,
        {
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "150000",
            "x-ratelimit-reset-tokens": "1h2m3.5s",
        },
        OPENAI_OK_BODY,
    ),
    "openai-maxed": lambda: (
        200,
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "190000",
            "x-ratelimit-reset-tokens": "12ms",
        },
        OPENAI_OK_BODY,
    ),
    # xAI: -1 where a bucket does not apply
    "xai-minus1": lambda: (
        200,
        {
            "x-ratelimit-limit-requests": "-1",
            "x-ratelimit-remaining-requests": "-1",
            "x-ratelimit-reset-requests": "-1",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "1999000",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        OPENAI_OK_BODY,
    ),
    # missing and garbage headers
    "no-headers": lambda: (200, {"request-id": "req_1"}, ANTHROPIC_OK_BODY),
    "garbage": lambda: (
        200,
        {
            "anthropic-ratelimit-unified-5h-utilization": "lots",
            "anthropic-ratelimit-unified-5h-reset": "tomorrow",
        },
        ANTHROPIC_OK_BODY,
    ),
    # invalid keys; the 401 echoes part of the key the way OpenAI does
    "invalid-401": lambda: (
        401,
        {},
        {
            "error": {
                "message": "Incorrect API key provided: sk-test-abcdef123456. "
                "You can find your API key at ...",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
    ),
    "invalid-403": lambda: (
        403,
        {},
        {"type": "error", "error": {"type": "permission_error", "message": "OAuth token has been revoked"}},
    ),
    # Gemini
    "gemini-ok": lambda: (
        200,
        {},
        {
            "candidates": [{"content": {"parts": [{"text": "."}]}}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1},
        },
    ),
    "gemini-429": _gemini_429,
    "gemini-badkey": lambda: (
        400,
        {},
        {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            }
        },
    ),
    # OpenRouter key endpoint
    "openrouter-ok": lambda: (
        200,
        {},
        {
            "data": {
                "label": "sk-or-v1-abc...xyz",
                "limit": 20,
                "usage": 4.5,
                "limit_remaining": 15.5,
                "is_free_tier": False,
                "rate_limit": {"requests": 10, "interval": "10s"},
            }
        },
    ),
    "openrouter-empty": lambda: (
        200,
        {},
        {"data": {"label": "x", "limit": 10, "usage": 10.0, "limit_remaining": 0, "is_free_tier": False}},
    ),
    "openrouter-nolimit": lambda: (
        200,
        {},
        {
            "data": {
                "label": "x",
                "limit": None,
                "usage": 3.25,
                "limit_remaining": None,
                "is_free_tier": False,
            }
        },
    ),
    # a cost-reporting proxy (LiteLLM)
    "cost-proxy": lambda: (
        200,
        {
            "x-litellm-response-cost": "0.000415",
            "x-litellm-key-spend": "2.5",
            "x-litellm-key-max-budget": "10.0",
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-tokens": "9000",
            "x-ratelimit-limit-tokens": "10000",
        },
        OPENAI_OK_BODY,
    ),
    "server-error": lambda: (500, {}, "<html>upstream exploded</html>"),
}


@dataclass
class FakeProviders:
    base: str
    #: (scenario, method, path suffix, request headers, json body)
    requests: list[tuple[str, str, str, dict[str, str], Any]] = field(default_factory=list)
    #: the client's (host, port) of each request: one per TCP connection the client opened
    peers: list[Any] = field(default_factory=list)

    def url(self, scenario: str) -> str:
        return f"{self.base}/{scenario}"

    def hits(self, scenario: str) -> int:
        return sum(1 for r in self.requests if r[0] == scenario)


@contextmanager
def fake_providers() -> Iterator[FakeProviders]:
    """Start the fake server on 127.0.0.1 (port 0) in a thread; stop it on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = None
        fake.requests.append(
            (scenario, request.method, request.match_info["rest"], dict(request.headers), body)
        )
        fake.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if scenario == "hang":
            await state["release"].wait()
            return web.Response(status=200)
        if scenario.startswith("barrier-"):
            # `barrier-<group>-<n>`: no answer until n requests of the group are in flight at once,
            # then each gets unified-ok; probes made one after another would all time out here
            _, group, n = scenario.split("-")
            arrived = state.setdefault("barriers", {}).setdefault(group, [0, asyncio.Event()])
            arrived[0] += 1
            if arrived[0] >= int(n):
                arrived[1].set()
            await arrived[1].wait()
            status, headers, payload = SCENARIOS["unified-ok"]()
            return web.Response(
                status=status, text=json.dumps(payload), headers=headers, content_type="application/json"
            )
        make = SCENARIOS.get(scenario)
        if make is None:
            return web.json_response({"error": {"message": f"no scenario {scenario}"}}, status=404)
        status, headers, payload = make()
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, headers=headers)
        return web.Response(
            status=status, text=json.dumps(payload), headers=headers, content_type="application/json"
        )

    async def start() -> None:
        state["release"] = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{scenario}/{rest:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        sockets = site._server.sockets  # type: ignore[union-attr]
        state["port"] = sockets[0].getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    fake = FakeProviders(base=f"http://127.0.0.1:{state['port']}")
    try:
        yield fake
    finally:

        async def stop() -> None:
            state["release"].set()
            await state["runner"].cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
