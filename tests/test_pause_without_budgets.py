"""A pause is a pause with no `budgets:` block at all: the proxy and a wrap() gate refuse the agent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from fakes import upstream as fx
from fakes.servers import running_proxy
from fakes.upstream import FakeUpstream

import llmbudget
from llmbudget.budget.factory import gate_from_config
from llmbudget.config import Config


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def test_api_pause_stops_the_agent_at_the_proxy(fake: FakeUpstream, tmp_path: Path) -> None:
    cfg = Config.model_validate(
        {"backends": {"anthropic": {"kind": "anthropic", "base_url": fake.url, "provider": "anthropic"}}}
    )
    assert cfg.budgets is None
    with running_proxy(cfg, tmp_path / "l.db") as proxy:
        client = anthropic.Anthropic(
            base_url=f"{proxy.url}/anthropic",
            api_key="sk-ant-test",
            max_retries=0,
            default_headers={"X-LLMBudget-Agent": "runaway"},
        )
        other = anthropic.Anthropic(
            base_url=f"{proxy.url}/anthropic",
            api_key="sk-ant-test",
            max_retries=0,
            default_headers={"X-LLMBudget-Agent": "calm"},
        )
        try:

            def ask(c: anthropic.Anthropic) -> object:
                return c.messages.create(
                    model=fx.ANTHROPIC_MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}]
                )

            ask(client)
            r = httpx.post(f"{proxy.url}/api/agents/runaway/pause", json={"reason": "looping"})
            assert r.status_code == 200 and r.json()["paused"] is True
            before = len(fake.requests)
            with pytest.raises(anthropic.RateLimitError) as info:
                ask(client)
            assert "Agent 'runaway' is paused" in str(info.value) and "looping" in str(info.value)
            assert len(fake.requests) == before  # never reached the provider
            ask(other)  # other agents keep being served
            httpx.post(f"{proxy.url}/api/agents/runaway/resume", json={})
            deadline = time.monotonic() + 3
            while True:  # the pause list is cached for at most a second
                try:
                    ask(client)
                    break
                except anthropic.RateLimitError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            blocked = proxy.events(status="blocked")
            assert [e.agent for e in blocked] == ["runaway"]
        finally:
            client.close()
            other.close()


def test_a_cli_pause_stops_a_wrapped_client_without_budgets(fake: FakeUpstream, tmp_path: Path) -> None:
    from llmbudget.cli import main

    db = f"sqlite:///{tmp_path / 'l.db'}"
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text("timezone: UTC\n")
    gate = gate_from_config(str(cfg), db)
    assert not gate.enforcer.budgets
    client = llmbudget.wrap(
        openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=0),
        agent="planner",
        gate=gate,
        ledger=gate.enforcer.state,
    )
    try:
        client.chat.completions.create(
            model=fx.OPENAI_CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert main(["agents", "pause", "planner", "--config", str(cfg), "--db", db]) == 0
        gate.enforcer._pauses = (0.0, {})  # another process paused: seen within a second; do not wait
        with pytest.raises(llmbudget.BudgetExceeded, match="Agent 'planner' is paused"):
            client.chat.completions.create(
                model=fx.OPENAI_CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        client.close()
        gate.enforcer.close()
        gate.enforcer.state.close()
