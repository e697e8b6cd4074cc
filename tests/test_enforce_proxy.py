"""Budgets through the real proxy: two `llmbudget serve` processes share one counter store.

200 concurrent requests against a small daily limit: the settled spend never exceeds the limit
and every refused request gets a clear 429 in the Anthropic error shape with Retry-After.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import upstream as fx
from fakes.servers import free_port
from fakes.upstream import FakeUpstream

from llmbudget.budget.factory import build_enforcer
from llmbudget.budget.status import budget_status
from llmbudget.config import parse_config
from llmbudget.money import from_nano
from llmbudget.pricing import PriceBook, TokenUsage


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def real_cost() -> Decimal:
    """What one fake Anthropic answer costs (the price book's figure, as the proxy records it)."""
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


def config_text(fake_url: str, limit: Decimal, extra: str = "") -> str:
    return (
        f"backends:\n  anthropic: {{kind: anthropic, base_url: {fake_url}, provider: anthropic}}\n"
        f"budgets:\n  daily_limit_usd: {limit}\n  timezone: UTC\n{extra}"
    )


def start_servers(
    tmp_path: Path, cfg_text: str, db_url: str, n: int = 2
) -> list[tuple[subprocess.Popen[str], str]]:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(cfg_text)
    procs = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(n):
        port = free_port()
        p = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from llmbudget.cli import main; sys.exit(main(sys.argv[1:]))",
                "serve",
                "--config",
                str(cfg),
                "--db",
                db_url,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append((p, f"http://127.0.0.1:{port}"))
    deadline = time.monotonic() + 30
    import urllib.request

    try:
        for p, url in procs:
            while True:
                if p.poll() is not None:
                    raise RuntimeError(f"llmbudget serve exited: {p.stderr.read() if p.stderr else ''}")
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("llmbudget serve did not start")
                time.sleep(0.1)
    except BaseException:
        stop_servers(procs)  # one server failing must not leave the others running into the next test
        raise
    return procs


def stop_servers(procs: list[tuple[subprocess.Popen[str], str]]) -> None:
    for p, _ in procs:
        p.terminate()
    for p, _ in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if p.stderr is not None:
            p.stderr.close()


#: the fake provider always reports 1,300 input tokens: a prompt of that many characters or more is
#: realistic (a token is at least one character), and the reservation bound holds for it
PROMPT = "Summarize the budget rules in one line. " * 40


async def hammer(urls: list[str], n: int) -> list[tuple[int, dict[str, str], Any]]:
    body = {"model": fx.ANTHROPIC_MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:

        async def one(i: int) -> tuple[int, dict[str, str], Any]:
            async with s.post(
                f"{urls[i % len(urls)]}/anthropic/v1/messages", json=body, headers=headers
            ) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json(content_type=None)

        return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(ledger db url, extra budgets config) for each counter store."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}", ""
        return
    if request.param == "postgres":
        yield str(request.getfixturevalue("pg_url")), ""
        return
    # a fresh key prefix: runs never collide, and nothing lands in the default key space
    import redis

    url = request.getfixturevalue("redis_url")
    prefix = f"llmbtest:{uuid.uuid4().hex[:8]}:"
    yield f"sqlite:///{tmp_path / 'shared.db'}", f"  redis_url: {url}\n  redis_prefix: '{prefix}'\n"
    client = redis.Redis.from_url(url)
    for k in client.scan_iter(match=prefix + "*"):
        client.delete(k)
    client.close()


def test_two_proxies_200_concurrent_requests_hold_the_daily_limit(
    fake: FakeUpstream, tmp_path: Path, store_setup: tuple[str, str]
) -> None:
    db_url, extra = store_setup
    per_call = real_cost()
    limit = (per_call * 25).quantize(Decimal("0.000001"))
    name = f"run-{uuid.uuid4().hex[:8]}"
    extra += f"  limits:\n    - {{name: {name}, scope: global, limit_usd: {limit}, period: day}}\n"
    text = config_text(fake.url, Decimal(1000), extra)
    procs = start_servers(tmp_path, text, db_url)
    try:
        results = asyncio.run(hammer([u for _, u in procs], 200))
    finally:
        stop_servers(procs)
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(ok) + len(refused) == 200, sorted({r[0] for r in results})
    assert ok and refused
    for _status, headers, body in refused:
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        msg = body["error"]["message"]
        assert f"budget '{name}'" in msg.lower() or f"Budget '{name}'" in msg, msg
        if "calls in flight" in msg and "Cloud budget exhausted" not in msg:
            assert headers["retry-after"] == "2"  # held by calls in flight: seconds, not the reset
        else:
            assert "Cloud budget exhausted, operating local-only until" in msg and "UTC" in msg
            assert int(headers["retry-after"]) > 60
    # the counters, read by a third party, hold the settled spend
    cfg, _ = parse_config(text, "x.yaml")
    enf = build_enforcer(cfg, db_url, prices=PriceBook.from_config(cfg))
    try:
        [st] = [s for s in budget_status(enf.budgets, enf.store, enf.tz) if s.budget.name == name]
        assert st.reserved == 0  # every reservation settled
        assert from_nano(st.spent) <= limit
        assert from_nano(st.spent) == per_call * len(ok)  # settled to the real cost, each call once
    finally:
        enf.close()


def test_fallback_serves_on_the_local_backend_with_the_notice(fake: FakeUpstream, tmp_path: Path) -> None:
    text = (
        f"backends:\n  anthropic: {{kind: anthropic, base_url: {fake.url}, provider: anthropic}}\n"
        f"  local: {{kind: anthropic, base_url: {fake.url}, local: true}}\n"
        "budgets:\n  daily_limit_usd: 0.000001\n  timezone: UTC\n  fallback: local\n  fallback_model: llama3.2\n"
    )
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    procs = start_servers(tmp_path, text, db, n=1)
    try:
        [(status, headers, body)] = asyncio.run(hammer([procs[0][1]], 1))
    finally:
        stop_servers(procs)
    assert status == 200 and body["type"] == "message"
    assert headers["x-llmbudget-notice"].startswith("Cloud budget exhausted, operating local-only until ")
    assert headers["x-llmbudget-notice"].endswith(" 00:00 UTC")
    from llmbudget.store import open_ledger

    with open_ledger(db, audit=False) as ledger:
        [ev] = ledger.query(limit=None)
    assert ev.status == "fallback" and ev.backend == "local" and ev.request_model == "llama3.2"


def test_upstream_connection_failure_releases_the_reservation(fake: FakeUpstream, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    text = (
        f"backends:\n  anthropic: {{kind: anthropic, base_url: {dead}, provider: anthropic}}\n"
        "budgets:\n  daily_limit_usd: 1.00\n  timezone: UTC\n"
    )
    db = f"sqlite:///{tmp_path / 'rel.db'}"
    procs = start_servers(tmp_path, text, db, n=1)
    try:
        results = asyncio.run(hammer([procs[0][1]], 5))
    finally:
        stop_servers(procs)
    assert [r[0] for r in results] == [502] * 5
    cfg, _ = parse_config(text, "x.yaml")
    enf = build_enforcer(cfg, db, prices=PriceBook.from_config(cfg))
    try:
        [st] = budget_status(enf.budgets, enf.store, enf.tz)
        assert (st.spent, st.reserved) == (0, 0)
    finally:
        enf.close()


def test_sdk_gets_rate_limit_error_when_imported_usage_filled_the_budget(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """Usage recorded without the proxy (an import) counts: the SDK's next call is refused, clearly."""
    import anthropic

    from llmbudget.events import UsageEvent, utcnow
    from llmbudget.store import open_ledger

    db = f"sqlite:///{tmp_path / 'imp.db'}"
    with open_ledger(db, audit=False) as ledger:
        ledger.record_many(
            [
                UsageEvent(
                    backend="anthropic",
                    model=fx.ANTHROPIC_MODEL,
                    provider="anthropic",
                    timestamp=utcnow(),
                    cost_usd=Decimal("0.99"),
                    price_status="priced",
                    source="import",
                )
            ]
        )
    procs = start_servers(tmp_path, config_text(fake.url, Decimal("1.00")), db, n=1)
    try:
        before = len(fake.requests)
        with (
            anthropic.Anthropic(api_key="k", base_url=f"{procs[0][1]}/anthropic", max_retries=0) as client,
            pytest.raises(anthropic.RateLimitError) as info,
        ):
            client.messages.create(
                model=fx.ANTHROPIC_MODEL, max_tokens=4000, messages=[{"role": "user", "content": "hello"}]
            )
        assert len(fake.requests) == before, "a refused call never reaches the provider"
    finally:
        stop_servers(procs)
    msg = info.value.body["error"]["message"]  # type: ignore[index]
    tomorrow = (utcnow() + timedelta(days=1)).date().isoformat()
    assert msg.startswith(f"Cloud budget exhausted, operating local-only until {tomorrow} 00:00 UTC: ")
    assert "budget 'daily' has spent $0.9900 of its $1.00 limit" in msg
    assert 0 < int(info.value.response.headers["retry-after"]) <= 86400


def test_cut_stream_is_settled_and_upstream_error_releases(fake: FakeUpstream, tmp_path: Path) -> None:
    """A stream the provider cuts is settled to what it used; an error answer spends nothing."""
    import httpx

    from llmbudget.store import open_ledger

    text = config_text(fake.url, Decimal("5.00"))
    db = f"sqlite:///{tmp_path / 'cut.db'}"
    procs = start_servers(tmp_path, text, db, n=1)
    body = {
        "model": fx.ANTHROPIC_MODEL,
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    try:
        url = f"{procs[0][1]}/anthropic/v1/messages"
        with httpx.Client(timeout=10) as client:
            cut = client.post(url, json=body, headers={"x-api-key": "k", "x-fake": "cut"})
            err = client.post(
                url, json={**body, "stream": False}, headers={"x-api-key": "k", "x-fake": "error"}
            )
        assert cut.status_code == 200 and err.status_code == 429
    finally:
        stop_servers(procs)  # flushes the ledger
    with open_ledger(db, audit=False) as ledger:
        events = {e.status: e for e in ledger.query(limit=None)}
    assert events["interrupted"].cost_nano and events["interrupted"].cost_nano > 0
    assert events["error"].cost_nano in (0, None)
    cfg, _ = parse_config(text, "x.yaml")
    enf = build_enforcer(cfg, db, prices=PriceBook.from_config(cfg))
    try:
        [st] = budget_status(enf.budgets, enf.store, enf.tz)
        assert st.reserved == 0  # nothing left booked: one settled, one released
        assert st.spent == events["interrupted"].cost_nano  # the cut stream's tokens, counted once
    finally:
        enf.close()
