"""`llmbudget serve --workers 2` from the outside: two processes on one port share the ledger and
the budget counters; every answered call is recorded exactly once, a budget holds, readiness says
when storage is gone, and the workers stop with the server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from fakes import upstream as fx
from fakes.upstream import FakeUpstream

from llmbudget.pricing import PriceBook, TokenUsage

#: a `Server` from conftest.py (`serve` fixture)
Server = Any
#: the fake provider reports 1,300 input tokens: a prompt of more characters keeps the reserved
#: worst case a true bound (a token is at least one character)
MESSAGES = [{"role": "user", "content": "Summarize the budget rules in one line. " * 40}]


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _real_cost() -> Decimal:
    u = fx.ANTHROPIC_USAGE
    usage = TokenUsage.of(
        u["input_tokens"] + u["cache_creation_input_tokens"] + u["cache_read_input_tokens"],
        u["cache_read_input_tokens"],
        u["cache_creation_input_tokens"],
        u["output_tokens"],
        0,
    )
    c = PriceBook().cost(fx.ANTHROPIC_MODEL, usage, provider="anthropic").cost_usd
    assert c is not None
    return c


async def _burst(url: str, n: int) -> list[tuple[int, str]]:
    body = {"model": fx.ANTHROPIC_MODEL, "max_tokens": 60, "messages": MESSAGES}
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n, force_close=True)) as s:

        async def one() -> tuple[int, str]:
            async with s.post(f"{url}/anthropic/v1/messages", json=body, headers=headers) as r:
                await r.read()
                return r.status, r.headers.get("x-llmbudget-request-id", "")

        return await asyncio.gather(*(one() for _ in range(n)))


def test_two_workers_serve_one_port_record_each_call_once_and_hold_a_budget(
    serve: Callable[..., Server],
    write_config: Callable[..., Path],
    fake_upstream: FakeUpstream,
    cli_json: Callable[..., Any],
) -> None:
    per_call = _real_cost()
    limit = per_call * 30
    server = serve(
        write_config(budgets={"daily_limit_usd": str(limit), "timezone": "UTC", "inflight_wait_s": 5}),
        args=("--workers", "2"),
    )
    deadline = time.monotonic() + 30
    while len(_children(server.pid)) < 2 or not all(
        httpx.get(server.url + "/healthz?ready=1", timeout=2).status_code == 200 for _ in range(4)
    ):
        assert time.monotonic() < deadline, server.logs()
        time.sleep(0.2)
    workers = _children(server.pid)
    assert len(workers) == 2
    ready = httpx.get(server.url + "/healthz?ready=1", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True

    results = asyncio.run(_burst(server.url, 120))
    answered = [rid for status, rid in results if status == 200]
    assert {status for status, _ in results} <= {200, 429}
    assert 20 <= len(answered) <= 30, len(answered)  # close to what fits, never more
    deadline = time.monotonic() + 10
    while len(events := server.events()) < len(answered):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ids = [e["id"] for e in events if e.get("http_status") == 200]
    assert sorted(ids) == sorted(answered)  # each answered call recorded once, by whichever worker
    server.stop()
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in workers)
    common = ("--db", server.db, "--config", str(server.config))
    [daily] = cli_json("budget", *common)["budgets"]
    assert daily["reserved_nano"] == 0  # both workers gave their leases back at shutdown
    assert Decimal(daily["spent_nano"]) / 10**9 == per_call * len(answered) <= limit


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_readiness_says_when_the_budget_counters_are_unreachable(
    serve: Callable[..., Server], write_config: Callable[..., Path]
) -> None:
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    server = serve(write_config(budgets={"daily_limit_usd": "5", "redis_url": dead}))
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200  # alive
    ready = httpx.get(server.url + "/healthz?ready=1", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["status"] == "unready"
    assert "budget counters" in ready.json()["cause"] and "127.0.0.1:1" in ready.json()["cause"]
