"""Every attempt is charged: an SDK retry through `wrap()` is admitted and settled on its own.

The fake provider fails the first attempt with a 500 (the SDKs retry it by default) and answers
the second; the official SDKs run with `max_retries` above 0.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from fakes import upstream as fx
from fakes.upstream import FakeUpstream

import llmbudget
from llmbudget.budget.factory import gate_from_config
from llmbudget.budget.status import budget_status


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Any]:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text("budgets:\n  daily_limit_usd: 100\n  timezone: UTC\n")
    g = gate_from_config(str(cfg), f"sqlite:///{tmp_path / 'l.db'}")
    yield g
    g.enforcer.close()
    g.enforcer.state.close()


def _check(gate: Any) -> None:
    gate.enforcer.give_back()  # the gate's unused budget lease counts as reserved until it goes back
    ledger = gate.enforcer.state
    ledger.flush()
    events = ledger.query(limit=None)
    assert sorted(e.http_status for e in events) == [200, 500]  # both attempts are recorded
    [ok] = [e for e in events if e.http_status == 200]
    assert ok.cost_nano and ok.cost_nano > 0
    # settled into the counter by the gate itself, before any reconciliation with the ledger
    counters = gate.enforcer.store.scan("daily|")
    assert sum(v[0] for v in counters.values()) == ok.cost_nano
    assert sum(v[1] for v in counters.values()) == 0  # nothing left reserved
    [st] = budget_status(gate.enforcer.budgets, gate.enforcer.store, gate.enforcer.tz)
    # the successful retry is charged, the failed attempt costs what the ledger says (nothing)
    assert st.spent == st.ledger == sum(e.cost_nano or 0 for e in events) == ok.cost_nano
    assert st.reserved == 0 and st.unledgered == 0


def _fail_first() -> dict[str, str]:
    return {"x-fake-fail-first": uuid.uuid4().hex}


def test_openai_sync_retry_is_charged(fake: FakeUpstream, gate: Any) -> None:
    client = llmbudget.wrap(
        openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=2),
        gate=gate,
        ledger=gate.enforcer.state,
        agent="retrier",
    )
    try:
        r = client.chat.completions.create(
            model=fx.OPENAI_CHAT_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=50,
            extra_headers=_fail_first(),
        )
        assert r.usage is not None
    finally:
        client.close()
    _check(gate)


def test_anthropic_sync_retry_is_charged(fake: FakeUpstream, gate: Any) -> None:
    client = llmbudget.wrap(
        anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=2),
        gate=gate,
        ledger=gate.enforcer.state,
    )
    try:
        client.messages.create(
            model=fx.ANTHROPIC_MODEL,
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=_fail_first(),
        )
    finally:
        client.close()
    _check(gate)


def test_openai_async_streamed_retry_is_charged(fake: FakeUpstream, gate: Any) -> None:
    async def run() -> None:
        client = llmbudget.wrap(
            openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=2),
            gate=gate,
            ledger=gate.enforcer.state,
        )
        try:
            stream = await client.chat.completions.create(
                model=fx.OPENAI_CHAT_MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=50,
                stream=True,
                extra_headers=_fail_first(),
            )
            async for _ in stream:
                pass
        finally:
            await client.close()

    asyncio.run(run())
    _check(gate)


def test_a_retry_of_a_paused_agent_is_refused(fake: FakeUpstream, gate: Any) -> None:
    client = llmbudget.wrap(
        openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=2),
        gate=gate,
        ledger=gate.enforcer.state,
        agent="looper",
    )
    paused = gate.enforcer.pause
    original = gate.enforcer.admit
    calls = 0

    def admit(call: Any) -> Any:  # the agent is paused while its first attempt is failing
        nonlocal calls
        calls += 1
        if calls == 2:
            paused("looper", reason="stopped mid-retry", by="cli")
        return original(call)

    gate.enforcer.admit = admit
    gate.enforcer.admit_local = lambda call: None  # every attempt through the patched admit()
    before = len(fake.requests)
    try:
        with pytest.raises(llmbudget.BudgetExceeded, match="Agent 'looper' is paused"):
            client.chat.completions.create(
                model=fx.OPENAI_CHAT_MODEL,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=_fail_first(),
            )
    finally:
        client.close()
    assert len(fake.requests) == before + 1  # only the first attempt reached the provider
    assert calls == 2  # the SDK did not retry the refusal
