"""In-process users: `llmbudget.wrap(client, gate=...)` raises BudgetExceeded with the notice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fakes.upstream import FakeUpstream

import llmbudget
from llmbudget.budget.factory import gate_from_config


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def test_wrapped_client_is_stopped_at_the_limit(fake: FakeUpstream, tmp_path: Path) -> None:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(
        f"backends:\n  openai: {{kind: openai, base_url: {fake.url}}}\n"
        "budgets:\n  daily_limit_usd: 0.02\n  timezone: UTC\n"
    )
    db = f"sqlite:///{tmp_path / 'l.db'}"
    gate = gate_from_config(str(cfg), db)
    assert gate is not None
    ledger = llmbudget.Ledger.open(db, audit=False)
    client = llmbudget.wrap(
        openai.OpenAI(api_key="sk-test", base_url=f"{fake.url}/v1", max_retries=0),
        gate=gate,
        ledger=ledger,
        backend="openai",
        agent="tester",
    )
    ok = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert ok.choices
    with pytest.raises(llmbudget.BudgetExceeded) as e:
        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=200_000, messages=[{"role": "user", "content": "hi"}]
        )
    assert "Cloud budget exhausted, operating local-only until" in str(e.value) and "budget 'daily'" in str(
        e.value
    )
    assert e.value.retry_after_s is not None and e.value.retry_after_s > 0
    client.close()  # an unclosed client's socket warning would fail a later test at random
    ledger.close()
    gate.enforcer.close()


def test_wrapped_client_switches_to_the_fallback_client(fake: FakeUpstream, tmp_path: Path) -> None:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(
        f"backends:\n  openai: {{kind: openai, base_url: {fake.url}}}\n"
        f"  ollama: {{kind: openai, base_url: {fake.url}, local: true}}\n"
        "budgets:\n  daily_limit_usd: 0.000001\n  timezone: UTC\n  fallback: ollama\n  fallback_model: llama3.2\n"
    )
    db = f"sqlite:///{tmp_path / 'l.db'}"
    gate = gate_from_config(str(cfg), db)
    assert gate is not None
    local = openai.OpenAI(api_key="unused", base_url=f"{fake.url}/v1", max_retries=0)
    client = llmbudget.wrap(
        openai.OpenAI(api_key="sk-test", base_url=f"{fake.url}/v1", max_retries=0),
        gate=gate,
        backend="openai",
        fallback=local,
    )
    before = len(fake.requests)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices
    # exactly one upstream request: the fallback's, with the fallback model
    assert len(fake.requests) == before + 1
    assert fake.requests[-1]["json"]["model"] == "llama3.2"
    client.close()
    local.close()
    gate.enforcer.close()
