"""Live updates end to end in-process: a call through the proxy (official openai SDK) reaches an
open `/api/live` stream within a second, and an alert threshold pauses the agent on the next call."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.config import Config


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def proxy(fake: FakeUpstream, tmp_path: Path) -> Iterator[RunningProxy]:
    cfg = Config.model_validate(
        {
            "backends": {"openai": {"kind": "openai", "base_url": fake.url, "provider": "openai"}},
            "budgets": {"monthly_limit_usd": "100"},
        }
    )
    with running_proxy(cfg, tmp_path / "ledger.db") as running:
        yield running


def _client(proxy: RunningProxy, agent: str, session: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.url}/openai/v1",
        api_key="sk-test",
        default_headers={"X-LLMBudget-Agent": agent, "X-LLMBudget-Session": session},
        max_retries=0,
    )


def _listen(
    url: str, frames: list[tuple[str, dict[str, Any]]], ready: threading.Event, stop: threading.Event
) -> None:
    try:
        _read(url, frames, ready, stop)
    except httpx.HTTPError:
        if not stop.is_set():
            raise


def _read(
    url: str, frames: list[tuple[str, dict[str, Any]]], ready: threading.Event, stop: threading.Event
) -> None:
    with httpx.Client(timeout=10) as c, c.stream("GET", f"{url}/api/live") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                frames.append((kind, json.loads(line[6:])))
                if kind == "hello":
                    ready.set()
            if stop.is_set():
                return


def test_a_call_reaches_the_live_stream_within_a_second(proxy: RunningProxy) -> None:
    frames: list[tuple[str, dict[str, Any]]] = []
    ready, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=_listen, args=(proxy.url, frames, ready, stop), daemon=True)
    t.start()
    assert ready.wait(5)
    with _client(proxy, "live-bot", "sess-1") as client:
        t0 = time.monotonic()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        while not any(k == "usage" for k, _ in frames):
            assert time.monotonic() - t0 < 1.0, "no increment within a second"
            time.sleep(0.01)
    stop.set()
    inc = next(d for k, d in frames if k == "usage")
    assert inc["agent"] == "live-bot" and inc["session"] == "sess-1" and inc["tokens"] > 0
    assert inc["cost_nano"] > 0 and inc["model"].startswith("gpt-4o-mini")


def test_threshold_with_auto_pause_refuses_the_next_call(proxy: RunningProxy) -> None:
    with httpx.Client(base_url=proxy.url) as api:
        r = api.post(
            "/api/thresholds",
            json={"scope": "session", "agent": "spender", "limit_usd": "0.000001", "auto_pause": True},
        )
        assert r.status_code == 200
    with _client(proxy, "spender", "s-1") as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        deadline = time.monotonic() + 3
        while True:
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}]
                )
            except openai.RateLimitError as e:
                assert "paused" in str(e)
                break
            assert time.monotonic() < deadline, "the agent was not paused"
            time.sleep(0.1)
    notes = httpx.get(f"{proxy.url}/api/notifications?kind=threshold_crossed").json()["notifications"]
    assert notes and "'spender'" in notes[0]["message"] and "threshold" in notes[0]["message"]
