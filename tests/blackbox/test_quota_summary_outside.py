"""`GET /api/quota/summary` of `llmbudget serve` under concurrent requests: every request probes,
on the server's own event loop and one HTTP session it keeps, so connections to the provider are
reused instead of opened per request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from quota_fakes import FakeProviders, fake_providers


@pytest.fixture(scope="module")
def providers() -> Iterator[FakeProviders]:
    with fake_providers() as f:
        yield f


async def _summaries(url: str, n: int) -> list[httpx.Response]:
    # max_age=0s: no stored reading is fresh enough, so every request probes the account
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.get(f"{url}/api/quota/summary?max_age=0s") for _ in range(n)))


def test_concurrent_summaries_share_one_probe_session(
    providers: FakeProviders, write_config: Callable[..., Any], serve: Callable[..., Any]
) -> None:
    config = write_config(
        providers=[
            {
                "name": "max-1",
                "kind": "anthropic-unified",
                "base_url": providers.url("unified-ok"),
                "api_key_env": "FAKE_KEY",
            }
        ]
    )
    server = serve(config=config, env={"FAKE_KEY": "sk-test-123456789"})
    before = len(providers.requests)
    answers = asyncio.run(_summaries(server.url, 20))
    assert [r.status_code for r in answers] == [200] * 20, [r.text for r in answers if r.status_code != 200]
    for r in answers:
        body = r.json()
        assert body["probed"] == ["max-1"] and body["use"] == ["max-1"], body
    assert len(providers.requests) == before + 20  # each request probed the account once
    first_round = set(providers.peers[before:])
    assert len(first_round) <= 20
    # the same server again, one request after another: every probe goes out on a connection
    # the session already holds, none on a new one
    for _ in range(5):
        r = httpx.get(f"{server.url}/api/quota/summary?max_age=0s", timeout=60)
        assert r.status_code == 200 and r.json()["probed"] == ["max-1"], r.text
    assert len(providers.requests) == before + 25
    assert set(providers.peers[before + 20 :]) <= first_round, "a summary opened a connection of its own"
    server.stop()
    assert "Unclosed client session" not in server.logs()
