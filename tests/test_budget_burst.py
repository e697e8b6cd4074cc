"""A burst of 200 calls against a budget that fits 20 at their real cost, through `llmbudget serve`.

Calls refused only because calls in flight hold the rest wait briefly (`budgets.inflight_wait_s`)
for them to settle, so close to 20 are served whether the reserved worst case is the real cost
(1x) or 2.5 times it; every refusal says why, and the spend never passes the limit.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import upstream as fx
from fakes.upstream import FakeUpstream
from test_enforce_proxy import real_cost, start_servers, stop_servers

from llmbudget.admission import CallInfo
from llmbudget.budget.factory import build_enforcer
from llmbudget.budget.status import budget_status
from llmbudget.capture.base import estimate_tokens_from_json
from llmbudget.config import parse_config
from llmbudget.money import from_nano, to_nano
from llmbudget.pricing import PriceBook

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake() -> Any:
    server = FakeUpstream().start()
    yield server
    server.stop()


def _config(url: str, limit: Decimal) -> str:
    return (
        f"backends:\n  anthropic: {{kind: anthropic, base_url: {url}, provider: anthropic}}\n"
        f"budgets:\n  daily_limit_usd: {limit}\n  timezone: UTC\n  input_token_factor: 1.0\n"
        "  inflight_wait_s: 5\n"
    )


def _max_tokens_for(ratio: float, text: str) -> tuple[int, float]:
    """The max_tokens whose reserved worst case is closest to `ratio` x the real cost, and that ratio."""
    cfg, _ = parse_config(text, "x.yaml")
    enf = build_enforcer(cfg, "sqlite:///:memory:", prices=PriceBook.from_config(cfg))
    body = {"model": fx.ANTHROPIC_MODEL, "max_tokens": 1, "messages": MESSAGES}
    est = estimate_tokens_from_json(body)
    real = real_cost()
    best = (1, 0.0)
    for mt in range(1, 2000):
        info = CallInfo("anthropic", "anthropic", "anthropic", fx.ANTHROPIC_MODEL, est, mt)
        worst = enf.worst_case(info)[2]
        assert worst is not None
        r = float(worst / real)
        if abs(r - ratio) < abs(best[1] - ratio):
            best = (mt, r)
    enf.close()
    return best


async def _burst(url: str, max_tokens: int, n: int) -> list[tuple[int, dict[str, str], Any]]:
    body = {"model": fx.ANTHROPIC_MODEL, "max_tokens": max_tokens, "messages": MESSAGES}
    headers = {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as s:

        async def one() -> tuple[int, dict[str, str], Any]:
            async with s.post(f"{url}/anthropic/v1/messages", data=json.dumps(body), headers=headers) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json(content_type=None)

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("ratio", [1.0, 2.5])
def test_a_burst_of_200_serves_close_to_what_fits(fake: FakeUpstream, tmp_path: Path, ratio: float) -> None:
    per_call = real_cost()
    limit = per_call * 20
    text = _config(fake.url, limit)
    max_tokens, actual_ratio = _max_tokens_for(ratio, text)
    assert abs(actual_ratio - ratio) < 0.15, actual_ratio
    db = f"sqlite:///{tmp_path / 'burst.db'}"
    procs = start_servers(tmp_path, text, db, n=1)
    try:
        results = asyncio.run(_burst(procs[0][1], max_tokens, 200))
    finally:
        stop_servers(procs)
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    print(f"ratio {actual_ratio:.2f}: served {len(served)} of 20 that fit")
    assert len(served) + len(refused) == 200
    assert 16 <= len(served) <= 20, len(served)
    for _status, headers, body in refused:
        msg = body["error"]["message"]
        if "Cloud budget exhausted" in msg:  # spent money leaves no room: until the window resets
            assert int(headers["retry-after"]) > 60
        else:  # calls in flight hold the rest: seconds
            assert "calls in flight" in msg and headers["retry-after"] == "2", msg
    cfg, _ = parse_config(text, "x.yaml")
    enf = build_enforcer(cfg, db, prices=PriceBook.from_config(cfg))
    try:
        [st] = budget_status(enf.budgets, enf.store, enf.tz)
        assert st.reserved == 0
        assert st.spent <= to_nano(limit)
        assert from_nano(st.spent) == per_call * len(served)
    finally:
        enf.close()
