"""Every unit the price book knows and a response reports is charged: 1-hour cache writes, service
tiers (OpenAI flex/priority, Anthropic fast mode), audio/image/video tokens, web searches.

Expectations come from `genai_prices.calc_price` with the same usage and price context, and from
figures worked out by hand from the published per-million prices.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.events import UsageEvent
from llmbudget.money import to_nano
from llmbudget.pricing import (
    PriceBook,
    TokenUsage,
    anthropic_usage,
    gemini_usage,
    openai_chat_usage,
    openai_responses_usage,
)

#: after every dated price and variant these tests use (OpenAI's tier prices start 2026-10-12)
T = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
BOOK = PriceBook()

#: our tier name -> the price context genai-prices is asked with, per provider (spelled out by hand)
TIERS = (None, "default", "flex", "priority", "fast", "ultrafast", "batch")


def context_for(gp_provider: str, tier: str | None) -> dict[str, str] | None:
    if tier is None:
        return None
    if tier == "batch":
        return {"processing": "batch"}
    if gp_provider == "anthropic" and tier == "fast":
        return {"speed": "fast"}
    return {"service_tier": tier}


def gp_usage(u: TokenUsage) -> Usage:
    """The same usage in genai-prices' own terms.

    A cached count of a modality the provider did not report is 0 for llmbudget; genai-prices
    wants that said explicitly when both the cached total and the modality's input are reported.
    """
    units = dict(u.units)
    for m in ("audio", "image", "video"):
        if units.get(f"input_{m}_tokens") and u.cached_input_tokens:
            units.setdefault(f"cache_{m}_read_tokens", 0)
    return Usage(
        input_tokens=u.input_tokens,
        cache_read_tokens=u.cached_input_tokens,
        cache_write_tokens=u.cache_write_tokens,
        cache_write_1h_tokens=u.cache_write_1h_tokens,
        output_tokens=u.output_tokens,
        output_reasoning_tokens=u.reasoning_tokens,
        **units,
    )


RICH = TokenUsage.of(
    input_tokens=1_234_567,
    cached_input_tokens=300_001,
    cache_write_tokens=99_999,
    cache_write_1h_tokens=40_000,
    output_tokens=33_333,
    reasoning_tokens=5_000,
    units={
        "input_audio_tokens": 50_000,
        "input_image_tokens": 20_000,
        "input_video_tokens": 10_000,
        "cache_audio_read_tokens": 1_000,
        "cache_image_read_tokens": 2_000,
        "output_audio_tokens": 3_000,
        "output_image_tokens": 2_000,
        "output_video_tokens": 1_000,
        "web_searches": 3,
        "storage_searches": 2,
    },
)
SMALL = TokenUsage.of(
    7, 3, 2, 5, 1, 1, {"web_searches": 1, "input_audio_tokens": 2, "output_audio_tokens": 1}
)


def test_the_rich_usage_carries_every_unit() -> None:
    from llmbudget.events import UNIT_KEYS

    assert {k for k, _ in RICH.units} == UNIT_KEYS - {"cache_video_read_tokens"}
    assert RICH.service_tier is None


@pytest.mark.parametrize("usage", [RICH, SMALL], ids=["rich", "small"])
def test_every_model_tier_and_unit_agrees_with_calc_price(usage: TokenUsage) -> None:
    """The whole book, every tier: our integer arithmetic equals genai-prices to the nano-dollar."""
    from genai_prices import data

    checked = with_units = with_tier = 0
    for p in data.providers:
        for m in p.models:
            # every tier where the model has variant prices; two elsewhere (the result is the same)
            tiers = TIERS if m.price_variants else (None, "flex")
            for tier in tiers:
                u = usage.with_counts(service_tier=tier)
                try:
                    exp = calc_price(
                        gp_usage(u),
                        m.id,
                        provider_id=p.id,
                        genai_request_timestamp=T,
                        price_context=context_for(p.id, tier),
                    )
                except LookupError:
                    assert BOOK.cost(m.id, u, provider=p.id, at=T).status == "unpriced"
                    continue
                got = BOOK.cost_nano(m.id, u, provider=p.id, at=T)
                assert got == (to_nano(exp.total_price), "priced"), (p.id, m.id, tier)
                checked += 1
                keys = {k for k, v in vars(exp.model_price).items() if v is not None}
                with_units += bool(
                    keys - {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"}
                )
                with_tier += tier is not None and exp.model_price != m.get_prices(T)
    assert checked > 4_000
    assert with_units > 500, "models pricing 1h writes, audio, images or web searches were exercised"
    assert with_tier > 100, "tier prices that differ from the standard ones were exercised"


# ---------------------------------------------------------------- figures worked out by hand

SONNET_1H = {
    "input_tokens": 1000,
    "cache_creation_input_tokens": 8000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 8000},
    "cache_read_input_tokens": 0,
    "output_tokens": 300,
}


def test_one_hour_cache_writes_pay_the_one_hour_rate() -> None:
    # claude-sonnet-4-0: input $3, output $15, 5-minute write $3.75, 1-hour write $6 per million
    u = anthropic_usage(SONNET_1H)
    assert (u.input_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (9000, 8000, 8000)
    got = BOOK.cost("claude-sonnet-4-20250514", u, provider="anthropic", at=T)
    # 1000 * 3 + 8000 * 6 + 300 * 15 = 55,500 USD per million tokens
    assert got.cost_usd == Decimal("0.0555")
    # the figure recorded before: the one-hour writes at the five-minute rate
    folded = BOOK.cost(
        "claude-sonnet-4-20250514", u.with_counts(cache_write_1h_tokens=0), provider="anthropic", at=T
    )
    assert folded.cost_usd == Decimal("0.0375")


def test_mixed_ttl_writes() -> None:
    raw = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 0,
    }
    got = BOOK.cost("claude-sonnet-4-0", anthropic_usage(raw), provider="anthropic", at=T)
    assert got.cost_usd == Decimal("0.01578")  # 10 * 3 + 1000 * 3.75 + 2000 * 6 = 15,780


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        # gpt-5 per million: standard 1.25 / 10, flex 0.625 / 5, priority 2.5 / 20
        (None, Decimal("0.0225")),
        ("default", Decimal("0.0225")),
        ("flex", Decimal("0.01125")),
        ("priority", Decimal("0.045")),
        ("scale", Decimal("0.0225")),  # no price of its own in the book: the standard one
    ],
)
def test_openai_service_tiers(tier: str | None, expected: Decimal) -> None:
    u = openai_chat_usage({"prompt_tokens": 10_000, "completion_tokens": 1_000}).with_counts(
        service_tier=tier
    )
    assert BOOK.cost("gpt-5", u, provider="openai", at=T).cost_usd == expected


def test_tier_prices_start_on_their_date() -> None:
    before = datetime(2026, 10, 11, 23, 59, tzinfo=UTC)
    u = TokenUsage.of(10_000, output_tokens=1_000, service_tier="flex")
    assert BOOK.cost("gpt-5", u, provider="openai", at=before).cost_usd == Decimal("0.0225")
    assert BOOK.cost("gpt-5", u, provider="openai", at=T).cost_usd == Decimal("0.01125")


def test_anthropic_fast_mode() -> None:
    raw = {"input_tokens": 1000, "output_tokens": 1000, "service_tier": "standard", "speed": "fast"}
    u = anthropic_usage(raw)
    assert u.service_tier == "fast"
    # claude-opus-4-8: standard 5 / 25, fast 10 / 50 per million
    assert BOOK.cost("claude-opus-4-8", u, provider="anthropic", at=T).cost_usd == Decimal("0.06")
    std = anthropic_usage({**raw, "speed": "standard"})
    assert std.service_tier == "standard"
    assert BOOK.cost("claude-opus-4-8", std, provider="anthropic", at=T).cost_usd == Decimal("0.03")


def test_anthropic_web_searches() -> None:
    raw = {"input_tokens": 1000, "output_tokens": 100, "server_tool_use": {"web_search_requests": 3}}
    u = anthropic_usage(raw)
    assert dict(u.units) == {"web_searches": 3}
    # 1000 * 3 / 1e6 + 100 * 15 / 1e6 + 3 * 10 / 1000
    assert BOOK.cost("claude-sonnet-4-0", u, provider="anthropic", at=T).cost_usd == Decimal("0.0345")


def test_openai_audio_tokens() -> None:
    raw = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "prompt_tokens_details": {"audio_tokens": 400, "cached_tokens": 0},
        "completion_tokens_details": {"audio_tokens": 300, "reasoning_tokens": 0},
    }
    u = openai_chat_usage(raw)
    assert dict(u.units) == {"input_audio_tokens": 400, "output_audio_tokens": 300}
    # gpt-audio: text in 2.5, text out 10, audio in 32, audio out 64 per million
    # 600 * 2.5 + 400 * 32 + 200 * 10 + 300 * 64 = 35,500
    assert BOOK.cost("gpt-audio", u, provider="openai", at=T).cost_usd == Decimal("0.0355")


def test_responses_image_tokens() -> None:
    raw = {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 0, "image_tokens": 1000},
        "output_tokens": 0,
    }
    u = openai_responses_usage(raw)
    # gpt-image-1: input images 10 per million (text input 5)
    assert BOOK.cost("gpt-image-1", u, provider="openai", at=T).cost_usd == Decimal("0.01")


def test_gemini_modalities() -> None:
    raw = {
        "promptTokenCount": 3000,
        "candidatesTokenCount": 100,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 1000},
            {"modality": "AUDIO", "tokenCount": 2000},
        ],
    }
    u = gemini_usage(raw)
    assert dict(u.units) == {"input_audio_tokens": 2000}
    # gemini-2.5-flash: input 0.3, audio input 1, output 2.5 per million
    assert BOOK.cost("gemini-2.5-flash", u, provider="google", at=T).cost_usd == Decimal("0.00255")
    doc = gemini_usage(
        {"promptTokenCount": 10, "promptTokensDetails": [{"modality": "DOCUMENT", "tokenCount": 10}]}
    )
    assert dict(doc.units) == {"input_image_tokens": 10}  # genai-prices counts documents as images


def test_inconsistent_parts_never_charge_negative_counts() -> None:
    # a provider reporting more audio than input: the input total is what it is, audio capped by it
    u = TokenUsage.of(100, output_tokens=0, units={"input_audio_tokens": 500})
    got = BOOK.cost("gpt-audio", u, provider="openai", at=T)
    assert got.cost_usd is not None and got.cost_usd >= 0


def test_price_event_uses_the_events_tier_and_units() -> None:
    ev = UsageEvent(
        backend="openai",
        provider="openai",
        model="gpt-5",
        timestamp=T,
        input_tokens=10_000,
        output_tokens=1_000,
        service_tier="flex",
    )
    assert BOOK.price_event(ev).cost_usd == Decimal("0.01125")
    ev = UsageEvent(
        backend="anthropic",
        provider="anthropic",
        model="claude-sonnet-4-0",
        timestamp=T,
        input_tokens=9000,
        cache_write_tokens=8000,
        cache_write_1h_tokens=8000,
        output_tokens=300,
    )
    assert BOOK.price_event(ev).cost_usd == Decimal("0.0555")


def test_lookup_lists_unit_prices_and_notes_only_what_no_response_reports() -> None:
    info = BOOK.lookup("claude-sonnet-4-0", provider="anthropic", at=T)
    assert info is not None
    assert info.unit_prices == {"cache_write_1h_mtok": Decimal("6"), "web_searches_kcount": Decimal("10")}
    assert not any("not reported" in n for n in info.notes)
    flex = BOOK.lookup("gpt-5", provider="openai", at=T, service_tier="flex")
    assert flex is not None and flex.input_mtok == Decimal("0.625") and flex.service_tier == "flex"
    gpt5 = BOOK.lookup("gpt-5", provider="openai", at=T)
    assert gpt5 is not None and gpt5.notes == ()  # web and file searches are both read from answers
    transcribe = BOOK.lookup("gpt-transcribe", provider="openai", at=T)
    assert transcribe is not None and any("audio_hours" in n for n in transcribe.notes)


def _anthropic(**usage: Any) -> dict[str, Any]:
    return {"input_tokens": 0, "output_tokens": 0, **usage}


def test_event_json_round_trip_keeps_units_and_tier() -> None:
    ev = UsageEvent(
        backend="b",
        model="m",
        input_tokens=10,
        cache_write_tokens=5,
        cache_write_1h_tokens=3,
        service_tier="priority",
        units={"web_searches": 2},
    )
    d = ev.to_dict()
    assert (
        d["cache_write_1h_tokens"] == 3
        and d["service_tier"] == "priority"
        and d["units"] == {"web_searches": 2}
    )
    assert UsageEvent.from_dict(d) == ev


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cache_write_1h_tokens": 6}, "cache_write_1h_tokens"),
        ({"units": {"gold_bars": 1}}, "units"),
        ({"units": {"web_searches": -1}}, "units"),
        ({"units": {"web_searches": 1.5}}, "units"),
        ({"units": ["web_searches"]}, "units"),
        ({"service_tier": ""}, "service_tier"),
        ({"service_tier": "x" * 65}, "service_tier"),
    ],
)
def test_bad_units_and_tiers_name_the_field(changes: dict[str, Any], field: str) -> None:
    from llmbudget.errors import ValidationError

    base = {"backend": "b", "model": "m", "input_tokens": 10, "cache_write_tokens": 5}
    with pytest.raises(ValidationError) as info:
        UsageEvent.from_dict({**base, **changes})
    assert info.value.field == field


def test_override_with_a_one_hour_rate() -> None:
    from llmbudget.config import PriceOverride

    book = PriceBook(
        [
            PriceOverride(
                model="acme-claude",
                input_mtok=Decimal(2),
                output_mtok=Decimal(10),
                cache_write_mtok=Decimal("2.5"),
                cache_write_1h_mtok=Decimal(4),
            ),
            PriceOverride(
                model="acme-plain",
                input_mtok=Decimal(2),
                output_mtok=Decimal(10),
                cache_write_mtok=Decimal("2.5"),
            ),
        ]
    )
    u = TokenUsage.of(3000, 0, 3000, 0, 0, 2000)
    # 1000 five-minute writes at 2.5 and 2000 one-hour writes at 4 per million
    assert book.cost("acme-claude", u, at=T).cost_usd == Decimal("0.0105")
    assert book.cost("acme-plain", u, at=T).cost_usd == Decimal("0.0075")  # no 1-hour rate: all at 2.5
    info = book.lookup("acme-claude", at=T)
    assert info is not None and info.unit_prices == {"cache_write_1h_mtok": Decimal(4)}


def test_prices_command_shows_unit_prices_and_tiers(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from llmbudget.cli import main

    assert main(["prices", "gpt-5", "--tier", "flex", "--at", "2026-11-02", "--json"]) == 0
    flex = json.loads(capsys.readouterr().out)
    assert (flex["input_mtok"], flex["output_mtok"], flex["service_tier"]) == ("0.625", "5", "flex")
    assert flex["unit_prices"]["web_searches_kcount"] == "10"
    assert main(["prices", "claude-sonnet-4-0", "--at", "2026-11-02"]) == 0
    table = capsys.readouterr().out
    assert "Cache write, 1-hour TTL" in table and "$6.00 / M tokens" in table
    assert "Web searches" in table and "$10.00 / 1,000" in table


# ---------------------------------------------------------------- any consistent usage, any unit

_n = st.integers(0, 400_000)
_small = st.integers(0, 50)
UNIT_MODELS = [
    ("gpt-realtime", "openai", None),
    ("gpt-image-1.5", "openai", None),
    ("gpt-5", "openai", "priority"),
    ("claude-sonnet-4-5", "anthropic", None),  # tiers above 200k input, 1-hour writes, web searches
    ("claude-opus-4-8", "anthropic", "fast"),
    ("gemini-2.5-flash", "google", None),
    ("gemini-live-2.5-flash", "google", None),
]


@st.composite
def consistent_usages(draw: st.DrawFn) -> TokenUsage:
    """Input made of cached/uncached text, audio, image and video parts plus cache writes; output of parts."""
    cached = {m: draw(_n) for m in ("text", "audio", "image", "video")}
    fresh = {m: draw(_n) for m in ("text", "audio", "image", "video")}
    writes = draw(_n)
    one_hour = draw(st.integers(0, writes))
    out = {m: draw(_n) for m in ("text", "audio", "image", "video")}
    reasoning = draw(st.integers(0, out["text"]))
    units = {"web_searches": draw(_small), "storage_searches": draw(_small)}
    for m in ("audio", "image", "video"):
        units[f"input_{m}_tokens"] = cached[m] + fresh[m]
        units[f"cache_{m}_read_tokens"] = cached[m]
        units[f"output_{m}_tokens"] = out[m]
    return TokenUsage.of(
        sum(cached.values()) + sum(fresh.values()) + writes,
        sum(cached.values()),
        writes,
        sum(out.values()),
        reasoning,
        one_hour,
        units,
    )


@settings(max_examples=150, deadline=None)
@given(u=consistent_usages(), which=st.integers(0, len(UNIT_MODELS) - 1))
def test_any_consistent_usage_agrees_with_calc_price(u: TokenUsage, which: int) -> None:
    model, provider, tier = UNIT_MODELS[which]
    u = u.with_counts(service_tier=tier)
    exp = calc_price(
        gp_usage(u),
        model,
        provider_id=provider,
        genai_request_timestamp=T,
        price_context=context_for(provider, tier),
    ).total_price
    got = BOOK.cost(model, u, provider=provider, at=T)
    assert got.cost_nano == to_nano(exp) and got.status == "priced"
