"""What the provider reports reaches the event and its price, through the proxy and `wrap()`:
reported input tokens of a cut stream as they are, 1-hour cache writes, service tiers, web
searches; kept in both ledgers, exported, imported and re-priced.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget import wrap
from llmbudget.cli import main
from llmbudget.config import Config
from llmbudget.events import UsageEvent
from llmbudget.export import write_events_csv
from llmbudget.importer import import_jsonl
from llmbudget.pricing import PriceBook, TokenUsage
from llmbudget.store import open_ledger

BOOK = PriceBook()

#: a Claude call writing 8,000 tokens to the one-hour cache (claude-sonnet-4-0: $0.0555, not $0.0375)
SONNET = "claude-sonnet-4-20250514"
SONNET_1H = {
    "input_tokens": 1000,
    "cache_creation_input_tokens": 8000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 8000},
    "cache_read_input_tokens": 0,
    "output_tokens": 300,
    "service_tier": "standard",
}
#: a Claude Code turn: a big request, almost all of it read from the cache
CLAUDE_CODE_USAGE = {
    "input_tokens": 3,
    "cache_creation_input_tokens": 500,
    "cache_read_input_tokens": 5000,
    "output_tokens": 1,
    "service_tier": "standard",
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    cfg = Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": fake.url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": fake.url, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": fake.url, "provider": "google"},
            }
        }
    )
    with running_proxy(cfg, tmp_path_factory.mktemp("units") / "ledger.db") as p:
        yield p


def sid() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def claude(proxy: RunningProxy, sess: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="k",
        base_url=f"{proxy.url}/anthropic",
        max_retries=0,
        default_headers={"X-LLMBudget-Session": sess, **headers},
    )


def expected_cost(ev: UsageEvent) -> Decimal | None:
    return BOOK.cost(ev.model, TokenUsage.from_event(ev), provider=ev.provider, at=ev.timestamp).cost_usd


# ---------------------------------------------------------------- a cut stream keeps reported input


def test_cut_claude_stream_keeps_the_reported_input_exactly(proxy: RunningProxy) -> None:
    sess = sid()
    big = "lorem ipsum dolor sit amet " * 8000  # ~216,000 characters: an estimate of ~54,000 tokens
    client = claude(proxy, sess, **{"x-fake-cut-after": "4", "x-fake-usage": json.dumps(CLAUDE_CODE_USAGE)})
    with (
        pytest.raises(anthropic.APIError),
        client.messages.stream(
            model="claude-sonnet-4-0", max_tokens=100, messages=[{"role": "user", "content": big}]
        ) as stream,
    ):
        for _ in stream:
            pass
    [ev] = proxy.wait_events(1, session=sess)
    assert ev.status == "interrupted"
    # exactly what message_start reported: 3 + 500 + 5000, of which 5000 cached and 500 written
    assert (ev.input_tokens, ev.cached_input_tokens, ev.cache_write_tokens) == (5503, 5000, 500)
    assert ev.output_tokens >= 1
    assert ev.cost_usd == expected_cost(ev)
    assert ev.cost_usd is not None and ev.cost_usd < Decimal("0.01")  # the estimate would be ~$0.16


def test_cut_gemini_stream_keeps_the_reported_prompt(proxy: RunningProxy) -> None:
    sess = sid()
    usage = {"promptTokenCount": 40, "candidatesTokenCount": 9, "totalTokenCount": 49}
    r = httpx.post(
        f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json={"contents": [{"parts": [{"text": "word " * 4000}]}]},
        headers={
            "x-goog-api-key": "k",
            "X-LLMBudget-Session": sess,
            "x-fake-cut-after": "2",
            "x-fake-usage": json.dumps(usage),
        },
    )
    assert r.status_code == 200
    [ev] = proxy.wait_events(1, session=sess)
    assert ev.status == "interrupted" and ev.input_tokens == 40


def test_cut_stream_without_reported_usage_is_estimated(proxy: RunningProxy) -> None:
    sess = sid()
    r = httpx.post(
        f"{proxy.url}/openai/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "a" * 4000}]},
        headers={"X-LLMBudget-Session": sess, "x-fake-cut-after": "2"},
    )
    assert r.status_code == 200
    [ev] = proxy.wait_events(1, session=sess)
    assert ev.status == "interrupted" and 1000 <= ev.input_tokens <= 1010  # 4000 characters / 4 (+ framing)


# ---------------------------------------------------------------- units and tiers, proxy and wrap()


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_one_hour_cache_writes_through_the_proxy(proxy: RunningProxy, stream: bool) -> None:
    sess = sid()
    client = claude(proxy, sess, **{"x-fake-usage": json.dumps(SONNET_1H), "x-fake-model": SONNET})
    if stream:
        with client.messages.stream(
            model="claude-sonnet-4-0", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            s.until_done()
    else:
        client.messages.create(
            model="claude-sonnet-4-0", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    [ev] = proxy.wait_events(1, session=sess)
    assert (ev.cache_write_tokens, ev.cache_write_1h_tokens, ev.service_tier) == (8000, 8000, "standard")
    assert ev.cost_usd == Decimal("0.0555")


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize(
    ("tier", "cost"), [("flex", "0.01125"), ("priority", "0.045"), ("default", "0.0225")]
)
def test_openai_service_tier_through_the_proxy(
    proxy: RunningProxy, stream: bool, tier: str, cost: str
) -> None:
    sess = sid()
    client = openai.OpenAI(
        api_key="k",
        base_url=f"{proxy.url}/openai/v1",
        max_retries=0,
        default_headers={
            "X-LLMBudget-Session": sess,
            "x-fake-service-tier": tier,
            "x-fake-model": "gpt-5-2025-08-07",
            "x-fake-usage": json.dumps(
                {"prompt_tokens": 10_000, "completion_tokens": 1_000, "total_tokens": 11_000}
            ),
        },
    )
    msgs: Any = [{"role": "user", "content": "hi"}]
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-5", messages=msgs, stream=True))
        assert all(c.usage is None for c in chunks), "the usage chunk stays hidden"
    else:
        answer = client.chat.completions.create(model="gpt-5", messages=msgs, service_tier="auto")
        assert answer.service_tier == tier
    [ev] = proxy.wait_events(1, session=sess)
    assert ev.service_tier == tier and ev.cost_usd == Decimal(cost)


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_responses_web_searches_through_the_proxy(proxy: RunningProxy, stream: bool) -> None:
    sess = sid()
    r = httpx.post(
        f"{proxy.url}/openai/v1/responses",
        json={"model": "gpt-5", "input": "search", "tools": [{"type": "web_search"}], "stream": stream},
        headers={
            "X-LLMBudget-Session": sess,
            "x-fake-web-searches": "2",
            "x-fake-file-searches": "1",
            "x-fake-model": "gpt-5",
            "x-fake-usage": json.dumps({"input_tokens": 1000, "output_tokens": 100}),
        },
    )
    assert r.status_code == 200
    [ev] = proxy.wait_events(1, session=sess)
    assert ev.units == {"web_searches": 2, "storage_searches": 1}
    # 1000 * 1.25 / 1e6 + 100 * 10 / 1e6 + 2 * 10 / 1000 + 1 * 2.5 / 1000
    assert ev.cost_usd == Decimal("0.02475")


@pytest.mark.parametrize(
    "path",
    [":generateContent", ":streamGenerateContent?alt=sse", ":streamGenerateContent"],
    ids=["create", "sse", "array"],
)
def test_gemini_audio_through_the_proxy(proxy: RunningProxy, path: str) -> None:
    sess = sid()
    usage = {
        "promptTokenCount": 3000,
        "candidatesTokenCount": 100,
        "totalTokenCount": 3100,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 1000},
            {"modality": "AUDIO", "tokenCount": 2000},
        ],
    }
    r = httpx.post(
        f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash{path}",
        json={"contents": [{"parts": [{"text": "listen"}]}]},
        headers={"x-goog-api-key": "k", "X-LLMBudget-Session": sess, "x-fake-usage": json.dumps(usage)},
    )
    assert r.status_code == 200
    [ev] = proxy.wait_events(1, session=sess)
    assert ev.units == {"input_audio_tokens": 2000} and ev.cost_usd == Decimal("0.00255")


def test_wrap_prices_one_hour_writes_and_tiers(fake: FakeUpstream, tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'wrap.db'}", flush_interval_s=0.05) as ledger:
        claude_client = wrap(
            anthropic.Anthropic(
                api_key="k",
                base_url=fake.url,
                max_retries=0,
                default_headers={"x-fake-usage": json.dumps(SONNET_1H), "x-fake-model": SONNET},
            ),
            ledger=ledger,
            prices=BOOK,
        )
        with claude_client.messages.stream(
            model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            s.until_done()
        gpt = wrap(
            openai.OpenAI(
                api_key="k",
                base_url=f"{fake.url}/v1",
                max_retries=0,
                default_headers={
                    "x-fake-service-tier": "flex",
                    "x-fake-model": "gpt-5",
                    "x-fake-usage": json.dumps({"prompt_tokens": 10_000, "completion_tokens": 1_000}),
                },
            ),
            ledger=ledger,
            prices=BOOK,
            provider="openai",
        )
        gpt.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
        ledger.flush()
        evs = list(reversed(ledger.query(limit=None)))
    assert [(e.cache_write_1h_tokens, e.service_tier, e.cost_usd) for e in evs] == [
        (8000, "standard", Decimal("0.0555")),
        (0, "flex", Decimal("0.01125")),
    ]


# ---------------------------------------------------------------- storage, export, import, reprice

AT = datetime(2026, 11, 2, 12, tzinfo=UTC)


def rich_events() -> list[UsageEvent]:
    return [
        UsageEvent(
            backend="anthropic",
            provider="anthropic",
            model="claude-sonnet-4-0",
            timestamp=AT,
            input_tokens=9000,
            cache_write_tokens=8000,
            cache_write_1h_tokens=8000,
            output_tokens=300,
            service_tier="standard",
            units={"web_searches": 3},
            cost_usd=Decimal("0.0375"),  # as recorded before: 1-hour writes at the 5-minute rate
            price_status="priced",
        ),
        UsageEvent(
            backend="openai",
            provider="openai",
            model="gpt-5",
            timestamp=AT,
            input_tokens=10_000,
            output_tokens=1_000,
            service_tier="flex",
            cost_usd=Decimal("0.0225"),  # as recorded before: flex at the standard price
            price_status="priced",
        ),
    ]


def test_ledger_keeps_units_and_tier(ledger_url: str) -> None:
    evs = rich_events()
    with open_ledger(ledger_url) as ledger:
        assert ledger.record_many(evs) == 2
        got = {e.id: e for e in ledger.query(limit=None)}
    for ev in evs:
        assert got[ev.id] == ev


def test_reprice_all_redoes_units_and_tiers(capsys: pytest.CaptureFixture[str], ledger_url: str) -> None:
    evs = rich_events()
    with open_ledger(ledger_url) as ledger:
        ledger.record_many(evs)
    code = main(["reprice", "--all", "--db", ledger_url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["changed"] == 2
    # +0.018 for the 1-hour writes, +0.03 for three searches, -0.01125 for flex
    assert Decimal(out["cost_delta_usd"]) == Decimal("0.03675")
    with open_ledger(ledger_url) as ledger:
        assert ledger.get(evs[0].id).cost_usd == Decimal("0.0855")  # type: ignore[union-attr]
        assert ledger.get(evs[1].id).cost_usd == Decimal("0.01125")  # type: ignore[union-attr]


def test_export_and_import_carry_units_and_tier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evs = [e.with_(cost_usd=None, price_status="unpriced") for e in rich_events()]
    src = f"sqlite:///{tmp_path / 'src.db'}"
    with open_ledger(src) as ledger:
        ledger.record_many(evs)
    code = main(
        ["export", "--json", "--db", src, "--since", "2026-11-01", "--output", str(tmp_path / "ev.jsonl")]
    )
    assert code == 0
    lines = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [(x["cache_write_1h_tokens"], x["service_tier"], x["units"]) for x in lines] == [
        (8000, "standard", {"web_searches": 3}),
        (0, "flex", {}),
    ]
    with open_ledger(f"sqlite:///{tmp_path / 'dst.db'}") as dst:
        res = import_jsonl(dst, tmp_path / "ev.jsonl", prices=BOOK)
        assert res.loaded == 2 and not res.bad
        got = {e.id: e for e in dst.query(limit=None)}
    # priced on import with every unit: 0.0555 + 0.03 searches; flex
    assert got[evs[0].id].cost_usd == Decimal("0.0855")
    assert got[evs[1].id].cost_usd == Decimal("0.01125")
    assert got[evs[0].id].units == {"web_searches": 3} and got[evs[1].id].service_tier == "flex"
    buf = io.StringIO()
    write_events_csv(evs, buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["cache_write_1h_tokens"] == "8000" and rows[0]["units"] == '{"web_searches": 3}'
    assert rows[1]["service_tier"] == "flex"


def test_import_names_a_bad_unit(tmp_path: Path) -> None:
    line = {"backend": "b", "model": "m", "input_tokens": 1, "units": {"web_searches": "many"}}
    (tmp_path / "bad.jsonl").write_text(json.dumps(line) + "\n")
    with open_ledger(f"sqlite:///{tmp_path / 'x.db'}") as ledger:
        res = import_jsonl(ledger, tmp_path / "bad.jsonl")
    assert res.loaded == 0 and [b.field for b in res.bad] == ["units"]


def test_claude_code_import_prices_one_hour_writes(tmp_path: Path) -> None:
    from llmbudget.quota import claude_code as cc

    usage = {**SONNET_1H, "cache_creation_input_tokens": 8000}
    line = {
        "sessionId": "0b1e0000-0000-4000-8000-000000000001",
        "version": "2.1.0",
        "cwd": "/home/alice/code/app",
        "message": {
            "id": "msg_1h",
            "type": "message",
            "role": "assistant",
            "model": SONNET,
            "content": [{"type": "text", "text": "done"}],
            "usage": usage,
        },
        "type": "assistant",
        "uuid": "u-1",
        "timestamp": "2026-11-20T09:00:00.000Z",
        "requestId": "req_1h",
    }
    log = tmp_path / "projects" / "-home-alice-code-app" / "0b1e0000-0000-4000-8000-000000000001.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps(line) + "\n")
    [ev], _ = cc.load_events([tmp_path], prices=BOOK)
    assert (ev.cache_write_tokens, ev.cache_write_1h_tokens) == (8000, 8000)
    assert ev.cost_usd == Decimal("0.0555")  # Claude Code writes its cache with a one-hour TTL
