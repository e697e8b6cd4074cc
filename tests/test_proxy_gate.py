"""The proxy's budget hook, with a small real Gate (a dollar limit held in memory) in front of the fake providers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, free_port, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.admission import Admission, CallInfo
from llmbudget.config import Config
from llmbudget.events import UsageEvent

NOTICE = "Cloud budget exhausted, operating local-only until 2026-12-01"


class LimitGate:
    """Admits calls while settled spend is under `limit`; then refuses, or falls back when told to."""

    def __init__(
        self, limit: Decimal, fallback: str | None = None, fallback_model: str | None = None
    ) -> None:
        self.limit = limit
        self.fallback = fallback
        self.fallback_model = fallback_model
        self.spent = Decimal(0)
        self.calls: list[CallInfo] = []
        self.settled: list[tuple[Admission, UsageEvent]] = []
        self.released: list[Admission] = []
        self._lock = asyncio.Lock()

    async def admit(self, call: CallInfo) -> Admission:
        async with self._lock:
            self.calls.append(call)
            if call.local or self.spent < self.limit:
                return Admission(allowed=True, reservation_id=uuid.uuid4().hex, budgets=("daily",))
            if self.fallback:
                return Admission(
                    allowed=True,
                    reservation_id=uuid.uuid4().hex,
                    fallback_backend=self.fallback,
                    fallback_model=self.fallback_model,
                    notice=NOTICE,
                )
            return Admission(allowed=False, message=NOTICE, notice=NOTICE, retry_after_s=3600)

    async def settle(self, admission: Admission, event: UsageEvent) -> None:
        async with self._lock:
            self.settled.append((admission, event))
            if event.cost_usd is not None and event.price_status != "local":
                self.spent += event.cost_usd

    async def release(self, admission: Admission) -> None:
        self.released.append(admission)


def config(fake_url: str) -> Config:
    return Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": fake_url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": fake_url, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": fake_url, "provider": "google"},
                "local": {"kind": "openai", "base_url": fake_url, "local": True},
                "dead": {
                    "kind": "openai",
                    "base_url": f"http://127.0.0.1:{free_port()}",
                    "provider": "openai",
                },
            }
        }
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def serve(fake: FakeUpstream, tmp_path: Path) -> Any:
    def start(gate: LimitGate, **extras: Any) -> Any:
        return running_proxy(config(fake.url), tmp_path / "ledger.db", parts={"gate": gate, **extras})

    return start


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def chat(proxy: RunningProxy, backend: str = "openai", **kw: Any) -> Any:
    with openai.OpenAI(  # closed here: an unclosed client's socket warns (errors) in a later test
        api_key="sk",
        base_url=f"{proxy.url}/{backend}/v1",
        max_retries=0,
        default_headers={"X-LLMBudget-Agent": "bot", "X-LLMBudget-Team": "red"},
    ) as client:
        return client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "word " * 400}], **kw
        )


def test_admitted_call_is_settled_with_its_event(serve: Any) -> None:
    gate = LimitGate(Decimal("1"))
    with serve(gate) as proxy:
        raw = chat(proxy, max_completion_tokens=321)
        wait_for(lambda: gate.settled)
        [call] = gate.calls
        assert (call.backend, call.protocol, call.model, call.max_output_tokens) == (
            "openai",
            "openai",
            "gpt-4o-mini",
            321,
        )
        assert 400 <= call.est_input_tokens <= 800  # "word " * 400 is 2000 characters
        assert (call.agent, call.team, call.streamed) == ("bot", "red", False)
        [(_, event)] = gate.settled
        assert event.id == raw.headers["x-llmbudget-request-id"] and event.cost_usd == gate.spent > 0
        assert gate.released == []


def test_refused_call_is_a_429_in_the_protocol_shape(serve: Any, fake: FakeUpstream) -> None:
    gate = LimitGate(Decimal("0"))
    with serve(gate) as proxy:
        before = len(fake.requests)
        with pytest.raises(openai.RateLimitError) as info:
            chat(proxy)
        assert NOTICE in info.value.message
        assert info.value.response.headers["retry-after"] == "3600"
        with (
            anthropic.Anthropic(api_key="k", base_url=f"{proxy.url}/anthropic", max_retries=0) as client,
            pytest.raises(anthropic.RateLimitError) as ainfo,
        ):
            client.messages.create(
                model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert ainfo.value.body["error"]["message"] == NOTICE  # type: ignore[index]
        r = httpx.post(
            f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent",
            json={"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"maxOutputTokens": 7}},
        )
        assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert gate.calls[-1].max_output_tokens == 7 and gate.calls[-1].model == "gemini-2.5-flash"
        assert len(fake.requests) == before, "a refused call never reaches the provider"
        events = proxy.wait_events(3)
        assert [e.status for e in events] == ["blocked"] * 3
        assert all(e.input_tokens == 0 and e.http_status == 429 for e in events)


def test_fallback_serves_the_call_elsewhere_with_a_notice(serve: Any, fake: FakeUpstream) -> None:
    gate = LimitGate(Decimal("0"), fallback="local", fallback_model="llama3.2")
    with serve(gate) as proxy:
        raw = chat(proxy)
        assert raw.headers["x-llmbudget-notice"] == NOTICE
        assert raw.parse().choices[0].message.content == "".join(fx.TEXT)
        assert fake.requests[-1]["json"]["model"] == "llama3.2"
        [event] = proxy.wait_events(1)
        assert (event.status, event.backend, event.request_model, event.price_status) == (
            "fallback",
            "local",
            "llama3.2",
            "local",
        )
        wait_for(lambda: gate.settled)
        assert gate.settled[0][1].id == event.id


def test_connection_failure_releases_the_reservation(serve: Any) -> None:
    gate = LimitGate(Decimal("1"))
    with serve(gate) as proxy:
        with pytest.raises(openai.APIStatusError) as info:
            chat(proxy, backend="dead")
        assert info.value.status_code == 502
        wait_for(lambda: gate.released)
        assert gate.settled == []


def test_cross_protocol_fallback_needs_a_translator(serve: Any) -> None:
    gate = LimitGate(Decimal("0"), fallback="local")
    with serve(gate) as proxy:
        with (
            anthropic.Anthropic(api_key="k", base_url=f"{proxy.url}/anthropic", max_retries=0) as client,
            pytest.raises(anthropic.APIStatusError) as info,
        ):
            client.messages.create(
                model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 502 and "translator" in info.value.message
        wait_for(lambda: gate.released)


def test_a_translator_plugs_into_the_fallback_seam(serve: Any) -> None:
    gate = LimitGate(Decimal("0"), fallback="local")
    seen: list[tuple[str, str, str]] = []

    async def translate(proxy: Any, req: Any, target: str, send: Any) -> UsageEvent:
        seen.append((req.protocol, target, req.meter.request_model))
        body = (
            b'{"type":"message","role":"assistant","content":[{"type":"text","text":"local"}],'
            b'"model":"llama3.2","id":"m","stop_reason":"end_turn","stop_sequence":null,'
            b'"usage":{"input_tokens":3,"output_tokens":1}}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        event = UsageEvent(
            backend=target,
            model="llama3.2",
            input_tokens=3,
            output_tokens=1,
            status="fallback",
            source="proxy",
        )
        proxy.services.ledger.record(event)
        return event

    with serve(gate, translators={("anthropic", "openai"): translate}) as proxy:
        with anthropic.Anthropic(api_key="k", base_url=f"{proxy.url}/anthropic", max_retries=0) as client:
            msg = client.messages.create(
                model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert msg.content[0].text == "local"
        assert seen == [("anthropic", "local", "claude-sonnet-4-0")]
        wait_for(lambda: gate.settled)


class BrokenGate(LimitGate):
    async def admit(self, call: CallInfo) -> Admission:
        raise RuntimeError("counter store down")


def test_a_failing_gate_fails_closed_in_the_protocol_shape(serve: Any, fake: FakeUpstream) -> None:
    with serve(BrokenGate(Decimal(1))) as proxy:
        before = len(fake.requests)
        with pytest.raises(openai.InternalServerError) as info:
            chat(proxy)
        assert info.value.status_code == 503 and "could not check the budget" in info.value.message
        assert len(fake.requests) == before
        assert httpx.get(f"{proxy.url}/healthz").status_code == 200
