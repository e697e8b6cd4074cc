"""The reserved worst case counts every output a request can produce (`n`, `best_of`,
`candidateCount`), and an absurd output limit is the client's 400 naming the field, not a 503."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.capture import anthropic as anthropic_proto
from llmbudget.capture import gemini as gemini_proto
from llmbudget.capture import openai as openai_proto
from llmbudget.capture.base import BadRequest
from llmbudget.config import Config


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def config(fake_url: str, budgets: bool) -> Config:
    data: dict[str, Any] = {
        "backends": {
            "openai": {"kind": "openai", "base_url": fake_url, "provider": "openai"},
            "anthropic": {"kind": "anthropic", "base_url": fake_url, "provider": "anthropic"},
            "gemini": {"kind": "gemini", "base_url": fake_url, "provider": "google"},
        }
    }
    if budgets:  # so small that every call is refused, with the amount it needed in the message
        data["budgets"] = {"daily_limit_usd": "0.000001", "timezone": "UTC"}
    return Config.model_validate(data)


@pytest.fixture(scope="module", params=[False, True], ids=["no-budgets", "budgets"])
def proxy(
    request: pytest.FixtureRequest, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    db = tmp_path_factory.mktemp("worst") / "ledger.db"
    with running_proxy(config(fake.url, request.param), db) as running:
        yield running


def _needs(proxy: RunningProxy, **extra: Any) -> Decimal:
    """What the refusal says the call needed up to (every call is refused by the tiny budget)."""
    client = openai.OpenAI(base_url=f"{proxy.url}/openai/v1", api_key="sk-test", max_retries=0)
    try:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], **extra
            )
    finally:
        client.close()
    m = re.search(r"this call needs up to \$([0-9]+\.[0-9]+)", info.value.message)
    assert m, info.value.message
    return Decimal(m.group(1))


@pytest.fixture(scope="module")
def budget_proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    db = tmp_path_factory.mktemp("worst-n") / "ledger.db"
    with running_proxy(config(fake.url, True), db) as running:
        yield running


def test_n_choices_multiply_the_reserved_output(budget_proxy: RunningProxy) -> None:
    proxy = budget_proxy
    one = _needs(proxy, max_tokens=10_000)
    assert _needs(proxy, max_tokens=5_000, n=2) == one  # 2 choices of 5,000 = one of 10,000
    assert _needs(proxy, max_tokens=10_000, n=3) == _needs(proxy, max_tokens=30_000) > one


def test_meters_read_every_choice_count() -> None:
    def body(**kw: Any) -> bytes:
        return json.dumps({"model": "m", **kw}).encode()

    assert openai_proto.make_meter("/v1/chat/completions", "POST", body(n=4, max_tokens=9)).choices == 4  # type: ignore[union-attr]
    m = openai_proto.make_meter("/v1/completions", "POST", body(prompt="x", n=2, best_of=5, max_tokens=7))
    assert m is not None and m.choices == 5 and m.max_output_tokens == 7  # best_of are all generated, billed
    g = gemini_proto.make_meter(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "POST",
        json.dumps(
            {"contents": [], "generationConfig": {"candidateCount": 3, "maxOutputTokens": 100}}
        ).encode(),
    )
    assert g is not None and g.choices == 3 and g.max_output_tokens == 100
    a = anthropic_proto.make_meter("/v1/messages", "POST", body(max_tokens=64.0, messages=[]))
    assert a is not None and a.choices == 1 and a.max_output_tokens == 64  # 64.0 is a whole number


@pytest.mark.parametrize("value", [1e38, -1, 12.5, "100", True, 10**40])
def test_an_absurd_output_limit_is_named(value: Any) -> None:
    with pytest.raises(BadRequest, match=r"^max_tokens: must be a whole number"):
        anthropic_proto.make_meter(
            "/v1/messages", "POST", json.dumps({"model": "m", "max_tokens": value}).encode()
        )
    with pytest.raises(BadRequest, match=r"^n: must be a whole number"):
        openai_proto.make_meter(
            "/v1/chat/completions", "POST", json.dumps({"model": "m", "n": value}).encode()
        )


def test_absurd_max_tokens_is_a_400_in_each_protocols_shape(proxy: RunningProxy, fake: FakeUpstream) -> None:
    before = len(fake.requests)
    oa = openai.OpenAI(base_url=f"{proxy.url}/openai/v1", api_key="sk-test", max_retries=0)
    an = anthropic.Anthropic(base_url=f"{proxy.url}/anthropic", api_key="sk-ant-test", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as e1:
            oa.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=1e38,  # type: ignore[arg-type]
            )
        assert "max_tokens" in e1.value.message and e1.value.status_code == 400
        with pytest.raises(anthropic.BadRequestError) as e2:
            an.messages.create(
                model=fx.ANTHROPIC_MODEL, max_tokens=-5, messages=[{"role": "user", "content": "hi"}]
            )
        assert "max_tokens" in str(e2.value) and e2.value.status_code == 400
    finally:
        oa.close()
        an.close()
    r = httpx.post(
        f"{proxy.url}/gemini/v1beta/models/{fx.GEMINI_MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 0.5}},
        headers={"x-goog-api-key": "k"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and "generationConfig.maxOutputTokens" in err["message"]
    assert len(fake.requests) == before  # none of them reached the provider


def test_more_output_than_allowed_is_charged_in_full_and_flagged(budget_proxy: RunningProxy) -> None:
    """The provider answered 5,000 output tokens to a call that allowed 2 x 100."""
    enf = budget_proxy.services.enforcer
    enf.budgets[0] = dataclasses.replace(enf.budgets[0], limit=10**12)  # room for it
    client = openai.OpenAI(base_url=f"{budget_proxy.url}/openai/v1", api_key="sk-test", max_retries=0)
    usage = {"prompt_tokens": 10, "completion_tokens": 5000, "total_tokens": 5010}
    try:
        client.chat.completions.create(
            model=fx.OPENAI_CHAT_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=100,
            n=2,
            extra_headers={"x-fake-usage": json.dumps(usage)},
        )
    finally:
        client.close()
    [ev] = budget_proxy.wait_events(1, status="ok")
    assert ev.output_tokens == 5000 and ev.cost_nano and ev.cost_nano > 0
    assert ev.reason and "output_tokens 5000 exceeds the 200 the request allowed" in ev.reason


@pytest.fixture(scope="module")
def tier_proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    db = tmp_path_factory.mktemp("worst-tier") / "ledger.db"
    with running_proxy(config(fake.url, True), db) as running:
        yield running


def test_a_dearer_tier_asked_for_is_reserved_at_its_rates(tier_proxy: RunningProxy) -> None:
    """A priority request is billed at priority rates, so its worst case must be too (never the standard)."""
    budget_proxy = tier_proxy
    near = Decimal("0.001")  # the tier's few characters in the body add to the counted input
    standard = _needs(budget_proxy, max_tokens=10_000)
    assert abs(_needs(budget_proxy, max_tokens=10_000, service_tier="auto") - standard) < near
    priority = _needs(budget_proxy, max_tokens=10_000, service_tier="priority")
    assert priority > standard * Decimal("1.5")  # gpt-4o priority output is 1.7x the standard rate
    # a cheaper tier never reserves less than the standard prices: the tier that serves may differ
    assert abs(_needs(budget_proxy, max_tokens=10_000, service_tier="flex") - standard) < near


def test_meters_read_the_requested_tier() -> None:
    def body(**kw: Any) -> bytes:
        return json.dumps({"model": "m", "max_tokens": 5, "messages": [], **kw}).encode()

    def tier(meter: Any) -> Any:
        assert meter is not None
        return meter.requested_tier

    assert (
        tier(openai_proto.make_meter("/v1/chat/completions", "POST", body(service_tier="priority")))
        == "priority"
    )
    assert tier(openai_proto.make_meter("/v1/chat/completions", "POST", body(service_tier="auto"))) is None
    assert tier(openai_proto.make_meter("/v1/chat/completions", "POST", body())) is None
    assert tier(anthropic_proto.make_meter("/v1/messages", "POST", body(speed="fast"))) == "fast"
    assert tier(anthropic_proto.make_meter("/v1/messages", "POST", body())) is None
