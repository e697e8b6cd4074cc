"""Budgets from the outside: `llmbudget serve` in its own process, official SDKs as clients, the CLI
in other processes, `kill -9`.

- `import` and `reprice` while serve runs: `budget --json` spent equals `costs --json`, and the
  running proxy refuses once imported usage fills the budget;
- a pause with no `budgets:` block stops the agent;
- reservations held by a killed serve do not refuse calls after its restart;
- `n` > 1 is reserved as n outputs;
- an SDK retry is its own admission, charged when answered.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from fakes import upstream as fx
from fakes.upstream import FakeUpstream

#: a `Server` from conftest.py (`serve` fixture)
Server = Any
MESSAGES = [{"role": "user", "content": "Say hello in a few words, please."}]


def _ask(server: Server, **kw: Any) -> Any:
    client = server.anthropic()
    try:
        return client.messages.create(
            **{"model": fx.ANTHROPIC_MODEL, "max_tokens": 50, "messages": MESSAGES, **kw}
        )
    finally:
        client.close()


def _agree(cli_json: Callable[..., Any], server: Server) -> int:
    """`budget --json` spent for today == `costs --json` for today; returns it (nano-USD)."""
    common = ("--db", server.db, "--config", str(server.config))
    [daily] = [b for b in cli_json("budget", *common)["budgets"] if b["name"] == "daily"]
    costs = cli_json("costs", "--since", "today", *common)["total"]
    assert daily["spent_nano"] == (costs["cost_nano"] or 0) == daily["ledger_spent_nano"], (daily, costs)
    return int(daily["spent_nano"])


def test_import_and_reprice_agree_with_costs_and_reach_the_running_proxy(
    serve: Callable[..., Server],
    write_config: Callable[..., Path],
    llmbudget: Callable[..., Any],
    cli_json: Callable[..., Any],
    tmp_path: Path,
) -> None:
    budgets = {"daily_limit_usd": "1.00", "timezone": "UTC"}
    server = serve(write_config(budgets=budgets, timezone="UTC"))
    _ask(server)  # the day's counter exists from here on
    first = _agree(cli_json, server)
    assert first > 0
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    imported = tmp_path / "usage.jsonl"
    lines = [
        # $0.999 of today's usage that never passed the proxy: 66,600 output tokens of Sonnet at $15/M
        {"timestamp": now, "backend": "anthropic", "provider": "anthropic", "model": fx.ANTHROPIC_MODEL,
         "input_tokens": 0, "output_tokens": 66_600},
        # a model no price book knows: unpriced until a price exists
        {"timestamp": now, "backend": "anthropic", "provider": "anthropic", "model": "acme-mystery-1",
         "input_tokens": 1_000_000, "output_tokens": 0},
    ]  # fmt: skip
    imported.write_text("".join(json.dumps(x) + "\n" for x in lines))
    done = llmbudget("import", str(imported), "--db", server.db, "--config", str(server.config))
    assert done.returncode == 0, done.stderr
    # the running proxy sees the import at once (import reconciles the counters): the budget is full
    with pytest.raises(anthropic.RateLimitError) as info:
        _ask(server)
    assert "budget 'daily' has spent $" in str(info.value)
    after_import = _agree(cli_json, server)
    assert after_import == first + 999_000_000
    # a price appears for the unknown model; reprice charges it, and the budget follows
    priced = write_config(
        budgets=budgets,
        timezone="UTC",
        pricing=[{"model": "acme-mystery-1", "input_mtok": 0.25, "output_mtok": 1.0}],
    )
    done = llmbudget("reprice", "--db", server.db, "--config", str(priced))
    assert done.returncode == 0, done.stderr
    assert _agree(cli_json, server) == after_import + 250_000_000


def test_a_pause_without_budgets_stops_the_agent(
    serve: Callable[..., Server], llmbudget: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    config = write_config()
    assert "budgets" not in config.read_text()
    server = serve(config)
    headers = {"X-LLMBudget-Agent": "runaway"}
    _ask(server, extra_headers=headers)
    done = llmbudget(
        "agents", "pause", "runaway", "--reason", "loop", "--db", server.db, "--config", str(config)
    )
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5  # the proxy reads the pause list at most a second old
    while True:
        try:
            _ask(server, extra_headers=headers)
        except anthropic.RateLimitError as e:
            assert "Agent 'runaway' is paused" in str(e) and "loop" in str(e)
            break
        assert time.monotonic() < deadline, "the paused agent is still served"
        time.sleep(0.2)
    _ask(server, extra_headers={"X-LLMBudget-Agent": "calm"})  # others are served


def _needs(server: Server, **kw: Any) -> Decimal:
    client = server.openai()
    try:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **kw)
    finally:
        client.close()
    m = re.search(r"this call needs up to \$([0-9]+\.[0-9]+)", info.value.message)
    assert m, info.value.message
    return Decimal(m.group(1))


def test_n_choices_are_reserved_as_n_outputs(
    serve: Callable[..., Server], write_config: Callable[..., Path]
) -> None:
    server = serve(write_config(budgets={"daily_limit_usd": "0.000001", "timezone": "UTC"}))
    assert (
        _needs(server, max_tokens=4_000, n=4)
        == _needs(server, max_tokens=16_000)
        > _needs(server, max_tokens=4_000)
    )


def test_reservations_of_a_killed_serve_do_not_refuse_after_restart(
    serve: Callable[..., Server], write_config: Callable[..., Path], fake_upstream: FakeUpstream
) -> None:
    # three calls in flight (max_tokens 1,000 of Sonnet: about $0.016 each) fill a $0.05 budget
    server = serve(write_config(budgets={"daily_limit_usd": "0.05", "timezone": "UTC"}))
    errors: list[BaseException] = []

    def held_stream() -> None:
        client = server.anthropic()
        try:
            with client.messages.stream(
                model=fx.ANTHROPIC_MODEL, max_tokens=1000, messages=MESSAGES, extra_headers={"x-fake": "hold"}
            ) as s:
                for _ in s:
                    pass
        except BaseException as e:  # the server dies under it
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=held_stream, daemon=True) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len([r for r in fake_upstream.requests if r["headers"].get("x-fake") == "hold"]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(anthropic.RateLimitError) as info:  # the in-flight reservations fill the budget
            _ask(server, max_tokens=1000)
        assert "reserved by 3 calls in flight" in str(info.value), str(info.value)
        assert "Cloud budget exhausted" not in str(info.value)  # nothing is spent yet
        server.kill()  # kill -9 with three reservations held
        for t in threads:
            t.join(10)
        server.start()  # the successor on the same storage
        answer = _ask(server, max_tokens=1000)
        assert answer.content
    finally:
        fake_upstream.release()


def test_an_sdk_retry_through_the_proxy_is_charged(
    serve: Callable[..., Server], write_config: Callable[..., Path], cli_json: Callable[..., Any]
) -> None:
    server = serve(write_config(budgets={"daily_limit_usd": "5.00", "timezone": "UTC"}))
    client = anthropic.Anthropic(base_url=server.url + "/anthropic", api_key="sk-ant-test", max_retries=2)
    try:
        client.messages.create(
            model=fx.ANTHROPIC_MODEL,
            max_tokens=50,
            messages=MESSAGES,
            extra_headers={"x-fake-fail-first": uuid.uuid4().hex},
        )
    finally:
        client.close()
    deadline = time.monotonic() + 5
    while len(events := server.events()) < 2:  # each attempt is recorded within flush_interval_s
        assert time.monotonic() < deadline
        time.sleep(0.2)
    statuses = sorted(e["http_status"] for e in events)
    assert statuses == [200, 500]
    common = ("--db", server.db, "--config", str(server.config))
    deadline = time.monotonic() + 10
    while (daily := cli_json("budget", *common)["budgets"][0])["reserved_nano"]:
        # the server's unused lease goes back 2 s after its last call
        assert time.monotonic() < deadline, daily
        time.sleep(0.5)
    assert daily["spent_nano"] == cli_json("costs", "--since", "today", *common)["total"]["cost_nano"] > 0
    assert daily["drift_nano"] == 0  # settled by the gate, exactly
