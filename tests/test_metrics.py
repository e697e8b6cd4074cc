"""`/metrics`: the Prometheus series after real calls through the proxy (official SDKs), checked sample by
sample with prometheus_client's own parser; the agent label cap; no infinite gauge; the admin token."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream
from prometheus_client.parser import text_string_to_metric_families

from llmbudget.access.policy import AccessPolicy
from llmbudget.config import Config

TOKEN = "adm-metrics-0123456789abcdef"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def _config(fake: FakeUpstream) -> Config:
    return Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": fake.url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": fake.url, "provider": "anthropic"},
            },
            "budgets": {"monthly_limit_usd": "100"},
            "metrics": {"max_agents": 2},
        }
    )


@pytest.fixture
def proxy(fake: FakeUpstream, tmp_path: Path) -> Iterator[RunningProxy]:
    with running_proxy(_config(fake), tmp_path / "ledger.db") as running:
        yield running


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(lab)[label] for (n, lab), _ in samples.items() if n == name and label in dict(lab)}


def wait_scrape(url: str, until: Any, timeout: float = 5.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(url)
        if until(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def _openai(proxy: RunningProxy, agent: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.url}/openai/v1",
        api_key="sk-test",
        default_headers={"X-LLMBudget-Agent": agent},
        max_retries=0,
    )


def test_scrape_after_real_calls(proxy: RunningProxy) -> None:
    t0 = time.perf_counter()
    for agent in ("planner", "coder", "tester", "reviewer"):
        _openai(proxy, agent).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    claude = anthropic.Anthropic(
        base_url=f"{proxy.url}/anthropic",
        api_key="sk-ant-test",
        default_headers={"X-LLMBudget-Agent": "planner"},
        max_retries=0,
    )
    with claude.messages.stream(
        model="claude-sonnet-4-20250514", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        stream.get_final_message()
    wall = time.perf_counter() - t0
    events = proxy.wait_events(5)
    assert len(events) == 5
    s = wait_scrape(
        proxy.url,
        lambda s: (
            total(s, "llmbudget_requests_total") == 5
            and total(s, "llmbudget_proxy_overhead_seconds_count") == 5
            and total(s, "llmbudget_quota_utilization", account="anthropic", window="5h") > 0
        ),
    )

    # token histograms: sums and counts equal what the ledger recorded, per provider and token type
    for provider in ("openai", "anthropic"):
        evs = [e for e in events if e.provider == provider]
        model = evs[0].request_model or evs[0].model
        for ttype, field in (
            ("input", "input_tokens"),
            ("output", "output_tokens"),
            ("cached_input", "cached_input_tokens"),
            ("cache_write", "cache_write_tokens"),
            ("reasoning", "reasoning_tokens"),
        ):
            want = sum(getattr(e, field) for e in evs)
            got = total(
                s,
                "gen_ai_client_token_usage_sum",
                gen_ai_provider_name=provider,
                gen_ai_request_model=model,
                gen_ai_token_type=ttype,
            )
            assert got == want, (provider, ttype)
        assert total(
            s, "gen_ai_client_token_usage_count", gen_ai_provider_name=provider, gen_ai_token_type="input"
        ) == len(evs)
        assert total(
            s,
            "gen_ai_client_operation_duration_count",
            gen_ai_provider_name=provider,
            gen_ai_operation_name="chat",
        ) == len(evs)
    assert sum(e.cached_input_tokens for e in events) > 0 and sum(e.cache_write_tokens for e in events) > 0
    dur = total(s, "gen_ai_client_operation_duration_sum")
    assert dur == pytest.approx(sum(e.duration_ms for e in events) / 1000.0, rel=1e-6)

    # cost: the counter adds up to the ledger's exact sum; agents beyond max_agents=2 are "other"
    cost = sum((e.cost_usd for e in events), Decimal(0))
    assert cost > 0
    assert total(s, "llmbudget_cost_usd_total") == pytest.approx(float(cost), rel=1e-9)
    assert label_values(s, "llmbudget_cost_usd_total", "agent") == {"planner", "coder", "other"}
    other = sum((e.cost_usd for e in events if e.agent in ("tester", "reviewer")), Decimal(0))
    assert total(s, "llmbudget_cost_usd_total", agent="other") == pytest.approx(float(other), rel=1e-9)

    # budget gauges, read at scrape time from the counters
    assert total(s, "llmbudget_budget_limit", unit="usd") == 100.0
    assert total(s, "llmbudget_budget_spent", unit="usd") == pytest.approx(float(cost), rel=1e-6)
    reserved = total(s, "llmbudget_budget_reserved", unit="usd")
    assert reserved >= 0
    assert total(s, "llmbudget_budget_remaining", unit="usd") == pytest.approx(
        100.0 - float(cost) - reserved, rel=1e-6
    )

    # quota: the anthropic unified headers of the answers
    assert total(s, "llmbudget_quota_utilization", account="anthropic", window="5h") == pytest.approx(0.42)
    reset = total(s, "llmbudget_quota_reset_timestamp_seconds", account="anthropic", window="5h")
    assert time.time() < reset < time.time() + 3 * 3600

    # what the proxy added: one observation per metered call, together less than the calls took
    assert total(s, "llmbudget_proxy_overhead_seconds_count") == 5
    assert 0 < total(s, "llmbudget_proxy_overhead_seconds_sum") < wall

    # nothing infinite or NaN anywhere (a histogram's le="+Inf" bucket is a label, not a value)
    assert all(math.isfinite(v) for v in s.values())


def test_paused_agent_gauge_and_no_budget(fake: FakeUpstream, tmp_path: Path) -> None:
    cfg = Config.model_validate(
        {"backends": {"openai": {"kind": "openai", "base_url": fake.url, "provider": "openai"}}}
    )
    with running_proxy(cfg, tmp_path / "l.db") as proxy:
        s = scrape(proxy.url)
        assert total(s, "llmbudget_requests_total") == 0
        assert not [k for k in s if k[0].startswith("llmbudget_budget_")]
        r = httpx.post(f"{proxy.url}/api/agents/looper/pause", json={"reason": "test"}, timeout=10)
        assert r.status_code == 200
        assert total(scrape(proxy.url), "llmbudget_agent_paused", agent="looper") == 1.0


def test_metrics_need_the_admin_token_off_loopback(fake: FakeUpstream, tmp_path: Path) -> None:
    exposed = AccessPolicy(bind_host="0.0.0.0", token=TOKEN.encode(), token_missing=False, allowed_hosts=())
    with running_proxy(_config(fake), tmp_path / "l.db", parts={"access": exposed}) as proxy:
        refused = httpx.get(f"{proxy.url}/metrics", timeout=10)
        assert refused.status_code == 401
        assert "gen_ai_client_token_usage" not in refused.text
        s = scrape(proxy.url, {"Authorization": f"Bearer {TOKEN}"})
        assert ("llmbudget_proxy_overhead_seconds_count", frozenset()) in s
        assert httpx.get(f"{proxy.url}/healthz", timeout=10).status_code == 200


def test_two_apps_in_one_process_keep_their_own_series(fake: FakeUpstream, tmp_path: Path) -> None:
    with (
        running_proxy(_config(fake), tmp_path / "a.db") as a,
        running_proxy(_config(fake), tmp_path / "b.db") as b,
    ):
        _openai(a, "solo").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        a.wait_events(1)
        assert (
            total(
                wait_scrape(a.url, lambda s: total(s, "llmbudget_requests_total") == 1),
                "llmbudget_requests_total",
            )
            == 1
        )
        assert total(scrape(b.url), "llmbudget_requests_total") == 0


def test_bad_query_is_a_400_naming_it(proxy: RunningProxy) -> None:
    r = httpx.get(f"{proxy.url}/metrics?format=x", timeout=10)
    assert r.status_code == 400 and "format" in r.text


def _cost_samples(m: Any) -> dict[str, float]:
    from llmbudget.web.metrics import _PerCall

    out: dict[str, float] = {}
    for fam in _PerCall(m).collect():
        if fam.name == "llmbudget_cost_usd":
            for s in fam.samples:
                out[s.labels["agent"]] = out.get(s.labels["agent"], 0.0) + s.value
    return out


def test_the_agent_label_cap_keeps_the_top_spenders(tmp_path: Path) -> None:
    """Not the first N agents seen: an agent that outspends a labelled one takes its label."""
    from llmbudget.events import UsageEvent
    from llmbudget.pricing import PriceBook
    from llmbudget.services import Services
    from llmbudget.store import open_ledger
    from llmbudget.web.metrics import Metrics

    def call(agent: str, usd: str) -> UsageEvent:
        return UsageEvent(
            backend="openai", provider="openai", model="gpt-4o", agent=agent, cost_usd=Decimal(usd)
        )

    with open_ledger(f"sqlite:///{tmp_path / 'm.db'}") as led:
        m = Metrics(Services(config=Config(), ledger=led, prices=PriceBook()), max_agents=2)
        m.observe_events([call("early-1", "0.01"), call("early-2", "0.02"), call("small", "0.001")])
        assert _cost_samples(m) == pytest.approx({"early-1": 0.01, "early-2": 0.02, "other": 0.001})
        before = _cost_samples(m)
        m.observe_events([call("big", "0.50"), call("big", "0.25")])
        got = _cost_samples(m)
        # big passed early-1 (the smallest labelled spender) and took its place
        assert set(got) == {"early-2", "big", "other"}  # before: early-1 and early-2 kept for good
        assert got == pytest.approx({"early-2": 0.02, "big": 0.75, "other": 0.001})
        assert all(got[k] >= before.get(k, 0) for k in got)  # no series went down
        m.observe_events([call("small", "0.001"), call("early-1", "0.001")])  # still below early-2
        assert _cost_samples(m) == pytest.approx({"early-2": 0.02, "big": 0.75, "other": 0.003})
        assert m.agent_label("big") == "big" and m.agent_label("early-1") == "other"
        # the displaced agent's calls still count in every other family (requests, tokens)
        from llmbudget.web.metrics import _PerCall

        fams = {f.name: f for f in _PerCall(m).collect()}
        assert sum(x.value for x in fams["llmbudget_requests"].samples) == 7
