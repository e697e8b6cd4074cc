"""Metering seen from outside: `llmbudget serve` in its own process, the official SDKs as clients,
the fake upstream, and `llmbudget events --json` read from another process.

A stream cut right after `message_start` keeps the input tokens Anthropic reported there, exactly;
a call writing to the one-hour cache is priced at the one-hour rate; an OpenAI call served on the
flex tier is priced at the flex rate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import pytest

#: a `Server` from conftest.py (`serve` fixture)
Server = Any

#: a Claude Code turn: a large request, nearly all of it read from the prompt cache
CUT_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 640,
    "cache_read_input_tokens": 48_000,
    "output_tokens": 1,
    "service_tier": "standard",
}
#: 8,000 tokens written to the one-hour cache on Claude Sonnet 4
ONE_HOUR_USAGE = {
    "input_tokens": 1000,
    "cache_creation_input_tokens": 8000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 8000},
    "cache_read_input_tokens": 0,
    "output_tokens": 300,
    "service_tier": "standard",
}


def read_events(cli_json: Callable[..., Any], server: Server, session: str) -> list[dict[str, Any]]:
    """The session's events as `llmbudget events --json` prints them in another process, waited for."""
    deadline = time.monotonic() + 10
    while True:
        args = ("events", "--config", str(server.config), "--db", server.db, "--session", session)
        events: list[dict[str, Any]] = cli_json(*args)["events"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def reporting(usage: dict[str, Any], session: str, **headers: str) -> dict[str, Any]:
    """SDK client options: the session header, and the usage the fake upstream is to report."""
    return {"default_headers": {"X-LLMBudget-Session": session, "x-fake-usage": json.dumps(usage), **headers}}


def test_stream_cut_after_message_start_keeps_the_reported_input(
    serve: Callable[..., Server], cli_json: Callable[..., Any]
) -> None:
    server = serve()
    claude = server.anthropic(**reporting(CUT_USAGE, "cut-1", **{"x-fake-cut-after": "1"}))
    big = "Read the repository and explain the build. " * 5000  # ~55,000 tokens by the estimate
    seen: list[str] = []
    with (
        pytest.raises(anthropic.APIError),
        claude.messages.stream(
            model="claude-sonnet-4-0", max_tokens=1024, messages=[{"role": "user", "content": big}]
        ) as stream,
    ):
        for event in stream:
            seen.append(event.type)
    assert seen == ["message_start"], "the SDK got message_start, then the connection dropped"
    [ev] = read_events(cli_json, server, "cut-1")
    assert ev["status"] == "interrupted" and ev["streamed"] is True
    # exactly what message_start reported: 12 + 640 + 48,000 (input includes cache reads and writes)
    assert (ev["input_tokens"], ev["cached_input_tokens"], ev["cache_write_tokens"]) == (48_652, 48_000, 640)
    assert ev["output_tokens"] == 1
    # claude-sonnet-4-0: 12 * 3 + 48,000 * 0.3 + 640 * 3.75 + 1 * 15 = 16,851 USD per million tokens
    assert Decimal(ev["cost_usd"]) == Decimal("0.016851")


def test_one_hour_cache_writes_are_priced_at_the_one_hour_rate(
    serve: Callable[..., Server], cli_json: Callable[..., Any]
) -> None:
    server = serve()
    claude = server.anthropic(
        **reporting(ONE_HOUR_USAGE, "ttl-1", **{"x-fake-model": "claude-sonnet-4-20250514"})
    )
    with claude.messages.stream(
        model="claude-sonnet-4-0", max_tokens=1024, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_creation is not None
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 8000
    [ev] = read_events(cli_json, server, "ttl-1")
    assert ev["status"] == "ok"
    assert (ev["cache_write_tokens"], ev["cache_write_1h_tokens"]) == (8000, 8000)
    # 1000 * 3 + 8000 * 6 (one-hour writes) + 300 * 15 = 55,500 USD per million: $0.0555, not $0.0375
    assert Decimal(ev["cost_usd"]) == Decimal("0.0555")


def test_flex_tier_is_priced_at_the_flex_rate(
    serve: Callable[..., Server], cli_json: Callable[..., Any]
) -> None:
    server = serve()
    usage = {"prompt_tokens": 10_000, "completion_tokens": 1_000, "total_tokens": 11_000}
    gpt = server.openai(
        **reporting(usage, "flex-1", **{"x-fake-service-tier": "flex", "x-fake-model": "gpt-5-2025-08-07"})
    )
    chunks = list(
        gpt.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True, service_tier="flex"
        )
    )
    assert chunks[-1].service_tier == "flex"
    [ev] = read_events(cli_json, server, "flex-1")
    assert ev["service_tier"] == "flex"
    # gpt-5 on flex: 10,000 * 0.625 + 1,000 * 5 per million (the standard price would be $0.0225)
    assert Decimal(ev["cost_usd"]) == Decimal("0.01125")
