"""`llmbudget.wrap()`: the official SDKs metered in-process against the fake providers, into a real SQLite ledger."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from fakes import upstream as fx
from fakes.upstream import FakeUpstream

from llmbudget import BudgetExceeded, wrap
from llmbudget.admission import Admission, CallInfo
from llmbudget.config import Config
from llmbudget.events import UsageEvent
from llmbudget.pricing import PriceBook, normalize
from llmbudget.store import Ledger, open_ledger


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(f"sqlite:///{tmp_path / 'wrap.db'}", flush_interval_s=0.05) as led:
        yield led


PRICES = PriceBook.from_config(Config())


def events(ledger: Ledger) -> list[UsageEvent]:
    ledger.flush()
    return list(reversed(ledger.query(limit=None)))


def check(event: UsageEvent, usage: normalize.TokenUsage) -> None:
    assert {k: getattr(event, k) for k in usage.as_dict()} == usage.as_dict()
    priced = PRICES.price_event(
        UsageEvent(
            backend="x",
            model=event.model,
            provider=event.provider,
            timestamp=event.timestamp,
            **usage.as_dict(),
        )
    )
    assert event.cost_usd == priced.cost_usd and event.cost_usd is not None and event.cost_usd > 0
    assert event.source == "sdk"


def oai(fake: FakeUpstream, ledger: Ledger, **kw: Any) -> openai.OpenAI:
    return wrap(
        openai.OpenAI(api_key="sk", base_url=f"{fake.url}/v1", max_retries=0),
        ledger=ledger,
        prices=PRICES,
        provider="openai",
        **kw,
    )


def test_openai_chat_and_stream(fake: FakeUpstream, ledger: Ledger) -> None:
    client = oai(fake, ledger, agent="writer", session="s1", tags={"project": "alpha"})
    out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "".join(fx.TEXT)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    )
    assert all(c.choices for c in chunks), "the usage chunk wrap() asked for is hidden"
    assert fake.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    first, second = events(ledger)
    for ev in (first, second):
        check(ev, normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE))
        assert (ev.agent, ev.session, ev.tags, ev.backend, ev.status) == (
            "writer",
            "s1",
            {"project": "alpha"},
            "openai",
            "ok",
        )
    assert (first.streamed, second.streamed) == (False, True) and second.ttft_ms is not None


def test_openai_responses_and_embeddings(fake: FakeUpstream, ledger: Ledger) -> None:
    client = oai(fake, ledger)
    assert (
        list(client.responses.create(model="o4-mini", input="hi", stream=True))[-1].type
        == "response.completed"
    )
    client.embeddings.create(model="text-embedding-3-small", input="x")
    resp, emb = events(ledger)
    check(resp, normalize.openai_responses_usage(fx.OPENAI_RESPONSES_USAGE))
    check(emb, normalize.openai_embeddings_usage(fx.OPENAI_EMBEDDINGS_USAGE))


def test_async_openai(fake: FakeUpstream, ledger: Ledger) -> None:
    async def run() -> None:
        client = wrap(
            openai.AsyncOpenAI(api_key="sk", base_url=f"{fake.url}/v1", max_retries=0),
            ledger=ledger,
            prices=PRICES,
            provider="openai",
            session="async",
        )
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        assert [c async for c in stream if not c.choices] == []
        await client.close()

    asyncio.run(run())
    evs = events(ledger)
    assert [e.streamed for e in evs] == [False, True] and {e.session for e in evs} == {"async"}
    for ev in evs:
        check(ev, normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE))


def test_anthropic_create_and_stream(fake: FakeUpstream, ledger: Ledger) -> None:
    client = wrap(
        anthropic.Anthropic(api_key="k", base_url=fake.url, max_retries=0),
        ledger=ledger,
        prices=PRICES,
        provider="anthropic",
        agent="claude-bot",
    )
    client.messages.create(
        model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    with client.messages.stream(
        model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        assert "".join(stream.text_stream) == "".join(fx.TEXT)
    evs = events(ledger)
    assert [e.streamed for e in evs] == [False, True]
    for ev in evs:
        check(ev, normalize.anthropic_usage(fx.ANTHROPIC_USAGE))
        assert ev.agent == "claude-bot" and ev.model == fx.ANTHROPIC_MODEL


def test_async_anthropic_stream(fake: FakeUpstream, ledger: Ledger) -> None:
    async def run() -> None:
        client = wrap(
            anthropic.AsyncAnthropic(api_key="k", base_url=fake.url, max_retries=0),
            ledger=ledger,
            prices=PRICES,
            provider="anthropic",
        )
        stream = await client.messages.create(
            model="claude-sonnet-4-0", max_tokens=10, stream=True, messages=[{"role": "user", "content": "x"}]
        )
        assert [e.type async for e in stream][-1] == "message_stop"
        await client.close()

    asyncio.run(run())
    [ev] = events(ledger)
    check(ev, normalize.anthropic_usage(fx.ANTHROPIC_USAGE))


def test_abandoned_streams_are_metered(fake: FakeUpstream, ledger: Ledger) -> None:
    client = oai(fake, ledger)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hello " * 100}]
    )
    next(iter(stream))
    stream.close()  # closed early
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hello " * 100}]
    )
    next(iter(stream))
    del stream  # dropped without closing
    gc.collect()
    evs = events(ledger)
    assert [e.status for e in evs] == ["interrupted", "interrupted"]
    assert all(e.input_tokens > 100 for e in evs), "input estimated from the request (600 characters)"


def test_upstream_error_is_recorded(fake: FakeUpstream, ledger: Ledger) -> None:
    client = wrap(
        openai.OpenAI(
            api_key="sk", base_url=f"{fake.url}/v1", max_retries=0, default_headers={"x-fake": "error"}
        ),
        ledger=ledger,
        prices=PRICES,
        provider="openai",
    )
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    [ev] = events(ledger)
    assert (ev.status, ev.http_status) == ("error", 429)


def test_wrap_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="openai or anthropic"):
        wrap(object())


class Gate:
    """A real gate: a fixed answer, and a log of what it saw and through which face (with the
    event loop each async step ran on, None for the sync face)."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.calls: list[CallInfo] = []
        self.settled: list[UsageEvent] = []
        self.released = 0
        self.faces: list[tuple[str, str, asyncio.AbstractEventLoop | None]] = []

    def _seen(self, step: str, face: str) -> None:
        loop = asyncio.get_running_loop() if face == "async" else None
        self.faces.append((step, face, loop))

    async def admit(self, call: CallInfo) -> Admission:
        self._seen("admit", "async")
        self.calls.append(call)
        return self.admission

    async def settle(self, admission: Admission, event: UsageEvent) -> None:
        self._seen("settle", "async")
        self.settled.append(event)

    async def release(self, admission: Admission) -> None:
        self._seen("release", "async")
        self.released += 1

    def admit_sync(self, call: CallInfo) -> Admission:
        self._seen("admit", "sync")
        self.calls.append(call)
        return self.admission

    def settle_sync(self, admission: Admission, event: UsageEvent) -> None:
        self._seen("settle", "sync")
        self.settled.append(event)

    def release_sync(self, admission: Admission) -> None:
        self._seen("release", "sync")
        self.released += 1


def test_gate_admits_and_settles(fake: FakeUpstream, ledger: Ledger) -> None:
    gate = Gate(Admission(allowed=True, reservation_id="r1"))
    client = oai(fake, ledger, gate=gate, team="blue")
    client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=77, messages=[{"role": "user", "content": "hi"}]
    )
    [call] = gate.calls
    assert (call.model, call.max_output_tokens, call.team, call.protocol) == (
        "gpt-4o-mini",
        77,
        "blue",
        "openai",
    )
    [ev] = events(ledger)
    assert [e.id for e in gate.settled] == [ev.id]
    assert "x-llmbudget-admission" not in fake.requests[-1]["headers"]


def test_gate_refusal_raises_budget_exceeded(fake: FakeUpstream, ledger: Ledger) -> None:
    notice = "Cloud budget exhausted, operating local-only until 2026-12-01"
    gate = Gate(Admission(allowed=False, message=notice, retry_after_s=60))
    client = wrap(
        anthropic.Anthropic(api_key="k", base_url=fake.url, max_retries=0),
        ledger=ledger,
        prices=PRICES,
        gate=gate,
    )
    before = len(fake.requests)
    with pytest.raises(BudgetExceeded, match="operating local-only") as info:
        client.messages.create(
            model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.retry_after_s == 60
    with pytest.raises(BudgetExceeded):
        client.messages.stream(
            model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert len(fake.requests) == before and events(ledger) == []


def test_gate_fallback_uses_the_fallback_client(fake: FakeUpstream, ledger: Ledger) -> None:
    gate = Gate(
        Admission(allowed=True, fallback_backend="local", fallback_model="llama3.2", notice="local-only")
    )
    local = wrap(
        openai.OpenAI(api_key="none", base_url=f"{fake.url}/v1", max_retries=0),
        ledger=ledger,
        prices=PRICES,
        backend="local",
        local=True,
    )
    client = oai(fake, ledger, gate=gate, fallback=local)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert fake.requests[-1]["json"]["model"] == "llama3.2"
    [ev] = events(ledger)
    assert (ev.backend, ev.price_status, ev.cost_usd) == ("local", "local", Decimal(0))
    assert gate.released == 1


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_a_sync_client_asks_the_gates_sync_face_in_its_own_thread(fake: FakeUpstream, ledger: Ledger) -> None:
    """No event loop and no thread of wrap()'s own: the sync face, called where the call is made,
    also from a thread of a running event loop (asyncio.to_thread) and from the loop's own thread."""
    gate = Gate(Admission(allowed=True, reservation_id="r"))
    client = oai(fake, ledger, gate=gate)

    def call() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        assert list(stream)

    call()
    before = _threads()  # the ledger's writer started with the first event

    async def inside_a_loop() -> None:
        await asyncio.to_thread(call)
        call()  # blocking the loop's own thread, as a sync client inside async code does

    asyncio.run(inside_a_loop())
    assert _threads() - before == set(), "wrap() left a thread of its own behind"
    assert len(events(ledger)) == 6 and len(gate.settled) == 6
    assert {(face, loop) for _step, face, loop in gate.faces} == {("sync", None)}
    assert [step for step, _face, _loop in gate.faces] == ["admit", "settle"] * 6
    client.close()


def test_a_sync_client_refuses_a_gate_without_a_sync_face(fake: FakeUpstream, ledger: Ledger) -> None:
    class AsyncOnly:
        async def admit(self, call: CallInfo) -> Admission:
            return Admission(allowed=True)

        async def settle(self, admission: Admission, event: UsageEvent) -> None:
            pass

        async def release(self, admission: Admission) -> None:
            pass

    with pytest.raises(TypeError, match="sync face"):
        oai(fake, ledger, gate=AsyncOnly())
    # an async client needs only the async face
    client = wrap(
        openai.AsyncOpenAI(api_key="sk", base_url=f"{fake.url}/v1", max_retries=0),
        ledger=ledger,
        prices=PRICES,
        gate=AsyncOnly(),
    )
    asyncio.run(client.close())


def test_an_async_client_awaits_the_gates_async_face_on_the_callers_loop(
    fake: FakeUpstream, ledger: Ledger
) -> None:
    gate = Gate(Admission(allowed=True, reservation_id="r"))

    async def run() -> asyncio.AbstractEventLoop:
        client = wrap(
            openai.AsyncOpenAI(api_key="sk", base_url=f"{fake.url}/v1", max_retries=0),
            ledger=ledger,
            prices=PRICES,
            provider="openai",
            gate=gate,
        )
        try:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
            )
            assert [c async for c in stream]
        finally:
            await client.close()
        return asyncio.get_running_loop()

    loop = asyncio.run(run())
    assert len(gate.settled) == 2
    assert {(face, seen) for _step, face, seen in gate.faces} == {("async", loop)}


def test_async_anthropic_stream_manager_is_gated(fake: FakeUpstream, ledger: Ledger) -> None:
    async def run(gate: Gate) -> str:
        client = wrap(
            anthropic.AsyncAnthropic(api_key="k", base_url=fake.url, max_retries=0),
            ledger=ledger,
            prices=PRICES,
            provider="anthropic",
            gate=gate,
        )
        try:
            async with client.messages.stream(
                model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                return "".join([t async for t in stream.text_stream])
        finally:
            await client.close()

    ok = Gate(Admission(allowed=True, reservation_id="r"))
    assert asyncio.run(run(ok)) == "".join(fx.TEXT)
    [ev] = events(ledger)
    assert [e.id for e in ok.settled] == [ev.id] and ok.calls[0].streamed
    with pytest.raises(BudgetExceeded):
        asyncio.run(run(Gate(Admission(allowed=False, message="no budget left"))))


def test_default_ledger_and_prices_come_from_the_configuration(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "configured.db"
    monkeypatch.setenv("LLMBUDGET_DB", f"sqlite:///{db}")
    client = wrap(
        openai.OpenAI(api_key="sk", base_url=f"{fake.url}/v1", max_retries=0),
        provider="openai",
        agent="default",
    )
    client.embeddings.create(model="text-embedding-3-small", input="x")
    from llmbudget.capture import wrap as wrap_module

    wrap_module._ledgers.pop(f"sqlite:///{db}").close()  # flushes
    with open_ledger(f"sqlite:///{db}") as led:
        [ev] = led.query()
    assert ev.agent == "default" and ev.price_status == "priced"
