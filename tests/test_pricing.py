"""The price book: agreement with genai-prices to the nano-dollar, overrides, dated prices, unpriced, local.

Expectations are computed with `genai_prices.calc_price` from the raw provider numbers, with each
provider's token semantics spelled out by hand in the table, never by calling our own normalizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

import llmbudget
from llmbudget.config import Config, PriceOverride, parse_config
from llmbudget.errors import ConfigError
from llmbudget.events import UsageEvent
from llmbudget.money import from_nano, to_nano
from llmbudget.pricing import (
    PriceBook,
    TokenUsage,
    anthropic_usage,
    context_window,
    estimate_cost,
    gemini_usage,
    openai_chat_usage,
    openai_embeddings_usage,
    openai_responses_usage,
    provider_for,
)

T = datetime(2025, 9, 15, 12, 0, tzinfo=UTC)
CHAT, RESP, EMB, ANTH, GEM = (
    openai_chat_usage,
    openai_responses_usage,
    openai_embeddings_usage,
    anthropic_usage,
    gemini_usage,
)


@dataclass
class Case:
    id: str
    provider: str  # ours
    gp_provider: str  # genai-prices id
    model: str
    normalize: Any
    raw: dict[str, Any]
    #: genai-prices Usage fields, derived by hand from `raw` (input includes cache reads and writes)
    expect: dict[str, int]
    at: datetime = T


def _c(*a: Any, **k: Any) -> Case:
    return Case(*a, **k)


CASES = [
    # ---------------- OpenAI: prompt_tokens include cached; completion_tokens include reasoning
    _c(
        "gpt-4o plain",
        "openai",
        "openai",
        "gpt-4o",
        CHAT,
        {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500},
        {"input_tokens": 1200, "output_tokens": 300},
    ),
    _c(
        "gpt-4o cached",
        "openai",
        "openai",
        "gpt-4o",
        CHAT,
        {"prompt_tokens": 5000, "completion_tokens": 120, "prompt_tokens_details": {"cached_tokens": 4096}},
        {"input_tokens": 5000, "cache_read_tokens": 4096, "output_tokens": 120},
    ),
    _c(
        "gpt-4o-mini cached",
        "openai",
        "openai",
        "gpt-4o-mini",
        CHAT,
        {"prompt_tokens": 20000, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 19968}},
        {"input_tokens": 20000, "cache_read_tokens": 19968, "output_tokens": 50},
    ),
    _c(
        "o3-mini reasoning",
        "openai",
        "openai",
        "o3-mini",
        CHAT,
        {
            "prompt_tokens": 800,
            "completion_tokens": 2000,
            "total_tokens": 2800,
            "completion_tokens_details": {"reasoning_tokens": 1536},
        },
        {"input_tokens": 800, "output_tokens": 2000},
    ),
    _c(
        "o1 cached+reasoning",
        "openai",
        "openai",
        "o1",
        CHAT,
        {
            "prompt_tokens": 3000,
            "completion_tokens": 5000,
            "total_tokens": 8000,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 4000},
        },
        {"input_tokens": 3000, "cache_read_tokens": 1024, "output_tokens": 5000},
    ),
    _c(
        "gpt-4.1 responses cached",
        "openai",
        "openai",
        "gpt-4.1",
        RESP,
        {
            "input_tokens": 10000,
            "input_tokens_details": {"cached_tokens": 8000},
            "output_tokens": 500,
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        {"input_tokens": 10000, "cache_read_tokens": 8000, "output_tokens": 500},
    ),
    _c(
        "gpt-5 responses reasoning",
        "openai",
        "openai",
        "gpt-5",
        RESP,
        {"input_tokens": 700, "output_tokens": 3000, "output_tokens_details": {"reasoning_tokens": 2500}},
        {"input_tokens": 700, "output_tokens": 3000},
    ),
    _c(
        "o3 before the price cut",
        "openai",
        "openai",
        "o3",
        RESP,
        {"input_tokens": 1000, "output_tokens": 1000, "output_tokens_details": {"reasoning_tokens": 900}},
        {"input_tokens": 1000, "output_tokens": 1000},
        at=datetime(2025, 6, 1, 9, tzinfo=UTC),
    ),
    _c(
        "o3 after the price cut",
        "openai",
        "openai",
        "o3",
        RESP,
        {"input_tokens": 1000, "output_tokens": 1000, "output_tokens_details": {"reasoning_tokens": 900}},
        {"input_tokens": 1000, "output_tokens": 1000},
        at=datetime(2025, 6, 20, 9, tzinfo=UTC),
    ),
    _c(
        "embeddings",
        "openai",
        "openai",
        "text-embedding-3-small",
        EMB,
        {"prompt_tokens": 8000, "total_tokens": 8000},
        {"input_tokens": 8000},
    ),
    _c(
        "gpt-4o dated snapshot name",
        "openai",
        "openai",
        "gpt-4o-2024-08-06",
        CHAT,
        {"prompt_tokens": 77, "completion_tokens": 33},
        {"input_tokens": 77, "output_tokens": 33},
    ),
    # ---------------- Anthropic: input_tokens exclude cache reads and writes
    _c(
        "sonnet-4.5 plain",
        "anthropic",
        "anthropic",
        "claude-sonnet-4-5-20250929",
        ANTH,
        {"input_tokens": 1500, "output_tokens": 400},
        {"input_tokens": 1500, "output_tokens": 400},
    ),
    _c(
        "sonnet-4.5 cache read",
        "anthropic",
        "anthropic",
        "claude-sonnet-4-5-20250929",
        ANTH,
        {
            "input_tokens": 12,
            "cache_read_input_tokens": 30000,
            "cache_creation_input_tokens": 0,
            "output_tokens": 800,
        },
        {"input_tokens": 30012, "cache_read_tokens": 30000, "output_tokens": 800},
    ),
    _c(
        "sonnet-4.5 cache write",
        "anthropic",
        "anthropic",
        "claude-sonnet-4-5-20250929",
        ANTH,
        {"input_tokens": 50, "cache_creation_input_tokens": 10000, "output_tokens": 10},
        {"input_tokens": 10050, "cache_write_tokens": 10000, "output_tokens": 10},
    ),
    _c(
        "sonnet-4.5 read+write above 200k tier",
        "anthropic",
        "anthropic",
        "claude-sonnet-4-5",
        ANTH,
        {
            "input_tokens": 5000,
            "cache_read_input_tokens": 150000,
            "cache_creation_input_tokens": 60000,
            "output_tokens": 2000,
        },
        {
            "input_tokens": 215000,
            "cache_read_tokens": 150000,
            "cache_write_tokens": 60000,
            "output_tokens": 2000,
        },
    ),
    _c(
        "haiku-3.5 read+write",
        "anthropic",
        "anthropic",
        "claude-3-5-haiku-20241022",
        ANTH,
        {
            "input_tokens": 7,
            "cache_read_input_tokens": 2048,
            "cache_creation_input_tokens": 333,
            "output_tokens": 91,
        },
        {"input_tokens": 2388, "cache_read_tokens": 2048, "cache_write_tokens": 333, "output_tokens": 91},
    ),
    _c(
        "opus-4.1 with thinking in output",
        "anthropic",
        "anthropic",
        "claude-opus-4-1-20250805",
        ANTH,
        {"input_tokens": 100, "output_tokens": 9000},
        {"input_tokens": 100, "output_tokens": 9000},
    ),
    _c(
        "sonnet-3.7",
        "anthropic",
        "anthropic",
        "claude-3-7-sonnet-20250219",
        ANTH,
        {"input_tokens": 4321, "cache_read_input_tokens": 1234, "output_tokens": 567},
        {"input_tokens": 5555, "cache_read_tokens": 1234, "output_tokens": 567},
    ),
    _c(
        "sonnet-4 cache write",
        "anthropic",
        "anthropic",
        "claude-sonnet-4-20250514",
        ANTH,
        {
            "input_tokens": 3,
            "cache_creation_input_tokens": 4500,
            "cache_read_input_tokens": 0,
            "output_tokens": 21,
        },
        {"input_tokens": 4503, "cache_write_tokens": 4500, "output_tokens": 21},
    ),
    # ---------------- Google: promptTokenCount includes cached; thoughts are separate from candidates
    _c(
        "gemini-2.5-pro plain",
        "google",
        "google",
        "gemini-2.5-pro",
        GEM,
        {"promptTokenCount": 1000, "candidatesTokenCount": 200, "totalTokenCount": 1200},
        {"input_tokens": 1000, "output_tokens": 200},
    ),
    _c(
        "gemini-2.5-pro thoughts",
        "google",
        "google",
        "gemini-2.5-pro",
        GEM,
        {"promptTokenCount": 1000, "candidatesTokenCount": 200, "thoughtsTokenCount": 800},
        {"input_tokens": 1000, "output_tokens": 1000},
    ),
    _c(
        "gemini-2.5-pro above 200k cached",
        "google",
        "google",
        "gemini-2.5-pro",
        GEM,
        {
            "promptTokenCount": 250000,
            "cachedContentTokenCount": 100000,
            "candidatesTokenCount": 1000,
            "thoughtsTokenCount": 500,
        },
        {"input_tokens": 250000, "cache_read_tokens": 100000, "output_tokens": 1500},
    ),
    _c(
        "gemini-2.5-pro exactly 200k",
        "google",
        "google",
        "gemini-2.5-pro",
        GEM,
        {"promptTokenCount": 200000, "candidatesTokenCount": 10},
        {"input_tokens": 200000, "output_tokens": 10},
    ),
    _c(
        "gemini-2.5-flash cached+thoughts",
        "google",
        "google",
        "gemini-2.5-flash",
        GEM,
        {
            "promptTokenCount": 9000,
            "cachedContentTokenCount": 8192,
            "candidatesTokenCount": 300,
            "thoughtsTokenCount": 1200,
        },
        {"input_tokens": 9000, "cache_read_tokens": 8192, "output_tokens": 1500},
    ),
    _c(
        "gemini-2.0-flash",
        "google",
        "google",
        "gemini-2.0-flash",
        GEM,
        {"promptTokenCount": 31, "candidatesTokenCount": 7},
        {"input_tokens": 31, "output_tokens": 7},
    ),
    _c(
        "gemini-1.5-pro above 128k",
        "google",
        "google",
        "gemini-1.5-pro",
        GEM,
        {"promptTokenCount": 130001, "candidatesTokenCount": 999},
        {"input_tokens": 130001, "output_tokens": 999},
    ),
    _c(
        "gemini-2.5-flash-lite tool prompt",
        "google",
        "google",
        "gemini-2.5-flash-lite",
        GEM,
        {"promptTokenCount": 300, "toolUsePromptTokenCount": 200, "candidatesTokenCount": 10},
        {"input_tokens": 500, "output_tokens": 10},
    ),
    # ---------------- xAI: OpenAI shape, but reasoning is NOT inside completion_tokens
    _c(
        "grok-3 plain",
        "xai",
        "x-ai",
        "grok-3",
        CHAT,
        {"prompt_tokens": 640, "completion_tokens": 128, "total_tokens": 768},
        {"input_tokens": 640, "output_tokens": 128},
    ),
    _c(
        "grok-3-mini reasoning",
        "xai",
        "x-ai",
        "grok-3-mini",
        CHAT,
        {
            "prompt_tokens": 32,
            "completion_tokens": 9,
            "total_tokens": 135,
            "completion_tokens_details": {"reasoning_tokens": 94},
        },
        {"input_tokens": 32, "output_tokens": 103},
    ),
    _c(
        "grok-4 cached+reasoning",
        "xai",
        "x-ai",
        "grok-4-0709",
        CHAT,
        {
            "prompt_tokens": 2000,
            "completion_tokens": 100,
            "total_tokens": 2800,
            "prompt_tokens_details": {"cached_tokens": 1500},
            "completion_tokens_details": {"reasoning_tokens": 700},
        },
        {"input_tokens": 2000, "cache_read_tokens": 1500, "output_tokens": 800},
    ),
    _c(
        "grok-code-fast cached",
        "xai",
        "x-ai",
        "grok-code-fast-1",
        CHAT,
        {
            "prompt_tokens": 12000,
            "completion_tokens": 400,
            "total_tokens": 12400,
            "prompt_tokens_details": {"cached_tokens": 11776},
        },
        {"input_tokens": 12000, "cache_read_tokens": 11776, "output_tokens": 400},
    ),
    # ---------------- DeepSeek: cache hit/miss split; off-peak prices 16:30-00:30 UTC
    _c(
        "deepseek-chat hit/miss peak",
        "deepseek",
        "deepseek",
        "deepseek-chat",
        CHAT,
        {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "prompt_cache_hit_tokens": 600,
            "prompt_cache_miss_tokens": 400,
        },
        {"input_tokens": 1000, "cache_read_tokens": 600, "output_tokens": 200},
        at=datetime(2025, 9, 15, 10, 0, tzinfo=UTC),
    ),
    _c(
        "deepseek-chat hit/miss off-peak",
        "deepseek",
        "deepseek",
        "deepseek-chat",
        CHAT,
        {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "prompt_cache_hit_tokens": 600,
            "prompt_cache_miss_tokens": 400,
        },
        {"input_tokens": 1000, "cache_read_tokens": 600, "output_tokens": 200},
        at=datetime(2025, 9, 15, 20, 0, tzinfo=UTC),
    ),
    _c(
        "deepseek-chat at 16:30 boundary",
        "deepseek",
        "deepseek",
        "deepseek-chat",
        CHAT,
        {"prompt_cache_hit_tokens": 7, "prompt_cache_miss_tokens": 13, "completion_tokens": 3},
        {"input_tokens": 20, "cache_read_tokens": 7, "output_tokens": 3},
        at=datetime(2025, 9, 15, 16, 30, tzinfo=UTC),
    ),
    _c(
        "deepseek-reasoner reasoning+cache",
        "deepseek",
        "deepseek",
        "deepseek-reasoner",
        CHAT,
        {
            "prompt_tokens": 500,
            "completion_tokens": 3000,
            "total_tokens": 3500,
            "prompt_tokens_details": {"cached_tokens": 128},
            "completion_tokens_details": {"reasoning_tokens": 2500},
        },
        {"input_tokens": 500, "cache_read_tokens": 128, "output_tokens": 3000},
        at=datetime(2025, 9, 15, 3, 0, tzinfo=UTC),
    ),
    # ---------------- OpenRouter
    _c(
        "openrouter gpt-4o cached",
        "openrouter",
        "openrouter",
        "openai/gpt-4o",
        CHAT,
        {"prompt_tokens": 3333, "completion_tokens": 444, "prompt_tokens_details": {"cached_tokens": 1111}},
        {"input_tokens": 3333, "cache_read_tokens": 1111, "output_tokens": 444},
    ),
]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert {c.gp_provider for c in CASES} >= {"openai", "anthropic", "google", "x-ai", "deepseek"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_agrees_with_genai_prices_to_the_nano_dollar(case: Case) -> None:
    expected = calc_price(
        Usage(**case.expect), case.model, provider_id=case.gp_provider, genai_request_timestamp=case.at
    ).total_price
    usage = case.normalize(case.raw)
    result = PriceBook().cost(case.model, usage, provider=case.provider, at=case.at)
    assert result.status == "priced"
    assert result.cost_usd == from_nano(to_nano(expected))
    assert result.cost_nano == to_nano(expected)
    assert result.source.startswith("genai-prices ")
    assert expected > 0


def test_every_model_in_the_book_agrees() -> None:
    """Whole book, several times and usages (tiers, cache, rounding): our integer arithmetic equals calc_price."""
    from genai_prices import data

    book = PriceBook()
    times = [
        datetime(2024, 3, 1, 3, tzinfo=UTC),
        datetime(2025, 6, 1, 20, tzinfo=UTC),
        datetime(2026, 12, 2, 1, 30, tzinfo=UTC),
    ]
    usages = [
        TokenUsage(1_234_567, 300_001, 99_999, 33_333, 0),
        TokenUsage(7, 3, 1, 5, 0),
        TokenUsage(150_000, 0, 0, 0, 0),
    ]
    checked = 0
    for p in data.providers:
        for m in p.models:
            for i, t in enumerate(times):
                u = usages[(i + checked) % len(usages)]
                try:
                    exp = calc_price(
                        Usage(
                            input_tokens=u.input_tokens,
                            cache_read_tokens=u.cached_input_tokens,
                            cache_write_tokens=u.cache_write_tokens,
                            output_tokens=u.output_tokens,
                        ),
                        m.id,
                        provider_id=p.id,
                        genai_request_timestamp=t,
                    ).total_price
                except LookupError:
                    assert book.cost(m.id, u, provider=p.id, at=t).status == "unpriced"
                    continue
                got = book.cost_nano(m.id, u, provider=p.id, at=t)
                assert got == (to_nano(exp), "priced"), (p.id, m.id, t, u)
                checked += 1
    assert checked > 3000


# ---------------------------------------------------------------- overrides


def _po(**kw: Any) -> PriceOverride:
    return PriceOverride(**kw)


U = TokenUsage(1000, 400, 100, 10, 0)


def test_exact_override_wins_and_bills_cache_at_input_price_when_unset() -> None:
    book = PriceBook([_po(model="GPT-4o", input_mtok=Decimal(2), output_mtok=Decimal(8))])
    r = book.cost("gpt-4o", U, provider="openai", at=T)
    # no cache prices in the override: all 1000 input tokens at $2/M, 10 output at $8/M
    assert r.cost_usd == Decimal("0.00208")
    assert r.status == "override" and r.source == "override: GPT-4o"


def test_override_with_cache_prices() -> None:
    book = PriceBook(
        [
            _po(
                model="my-model",
                input_mtok=Decimal("1.5"),
                output_mtok=Decimal(6),
                cache_read_mtok=Decimal("0.15"),
                cache_write_mtok=Decimal("1.875"),
            )
        ]
    )
    r = book.cost("my-model", U, at=T)
    expected = (
        Decimal(500) * Decimal("1.5") + 400 * Decimal("0.15") + 100 * Decimal("1.875") + 10 * Decimal(6)
    ) / 1_000_000
    assert r.cost_usd == expected and r.status == "override"
    info = book.lookup("my-model", at=T)
    assert info is not None and info.cache_write_mtok == Decimal("1.875") and info.model_id is None


def test_regex_override_and_exact_beats_regex() -> None:
    book = PriceBook(
        [
            _po(model_regex=r"^ft:gpt-4o-mini:", input_mtok=Decimal(1), output_mtok=Decimal(1)),
            _po(model="ft:gpt-4o-mini:acme:v2", input_mtok=Decimal(3), output_mtok=Decimal(3)),
        ]
    )
    u = TokenUsage(1_000_000, 0, 0, 0, 0)
    assert book.cost("ft:gpt-4o-mini:acme:v1", u, at=T).cost_usd == Decimal(1)
    r = book.cost("ft:gpt-4o-mini:acme:v2", u, at=T)
    assert r.cost_usd == Decimal(3) and r.source == "override: ft:gpt-4o-mini:acme:v2"
    assert book.cost("gpt-4o-mini", u, provider="openai", at=T).status == "priced"  # regex anchored


def test_provider_restricted_override() -> None:
    book = PriceBook(
        [_po(model="gpt-4o", provider="openrouter", input_mtok=Decimal(9), output_mtok=Decimal(9))]
    )
    u = TokenUsage(1_000_000, 0, 0, 0, 0)
    assert book.cost("gpt-4o", u, provider="openrouter", at=T).cost_usd == Decimal(9)
    direct = book.cost("gpt-4o", u, provider="openai", at=T)
    assert direct.status == "priced"
    assert (
        direct.cost_usd
        == calc_price(
            Usage(input_tokens=1_000_000), "gpt-4o", provider_id="openai", genai_request_timestamp=T
        ).total_price
    )
    assert (
        book.cost("gpt-4o", u, at=T).status == "priced"
    )  # no provider known: the restricted one does not apply


def test_provider_spellings_fold() -> None:
    book = PriceBook([_po(model="grok-3", provider="x-ai", input_mtok=Decimal(1), output_mtok=Decimal(1))])
    assert book.cost("grok-3", U, provider="xai", at=T).status == "override"


def test_dated_overrides_never_rewrite_history() -> None:
    book = PriceBook(
        [
            _po(
                model="gpt-4o", input_mtok=Decimal(4), output_mtok=Decimal(4), effective_from=date(2025, 7, 1)
            ),
            _po(
                model="gpt-4o", input_mtok=Decimal(5), output_mtok=Decimal(5), effective_from=date(2025, 8, 1)
            ),
        ]
    )
    u = TokenUsage(1_000_000, 0, 0, 0, 0)
    package = calc_price(
        Usage(input_tokens=1_000_000),
        "gpt-4o",
        provider_id="openai",
        genai_request_timestamp=datetime(2025, 6, 30, tzinfo=UTC),
    ).total_price
    # in time order and out of order: the cache must give each instant its own price
    for _ in range(2):
        before = book.cost("gpt-4o", u, provider="openai", at=datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC))
        assert (before.cost_usd, before.status) == (package, "priced")
        assert book.cost("gpt-4o", u, provider="openai", at=datetime(2025, 7, 1, tzinfo=UTC)).cost_usd == 4
        assert (
            book.cost("gpt-4o", u, provider="openai", at=datetime(2025, 7, 31, 23, tzinfo=UTC)).cost_usd == 4
        )
        aug = book.cost("gpt-4o", u, provider="openai", at=datetime(2025, 8, 1, 0, 0, 1, tzinfo=UTC))
        assert aug.cost_usd == 5 and aug.source == "override: gpt-4o from 2025-08-01"
    info = book.lookup("gpt-4o", provider="openai", at=datetime(2025, 7, 15, tzinfo=UTC))
    assert info is not None and info.effective_from == date(2025, 7, 1) and info.status == "override"


def test_override_prices_an_unknown_model_from_its_date() -> None:
    book = PriceBook(
        [
            _po(
                model="acme-llm-9",
                input_mtok=Decimal(1),
                output_mtok=Decimal(2),
                effective_from=date(2025, 9, 1),
            )
        ]
    )
    assert book.cost("acme-llm-9", U, at=datetime(2025, 8, 31, tzinfo=UTC)).status == "unpriced"
    assert book.cost("acme-llm-9", U, at=datetime(2025, 9, 1, tzinfo=UTC)).status == "override"


def test_from_config_yaml() -> None:
    cfg, _ = parse_config(
        "backends:\n"
        "  ollama: {kind: openai, base_url: 'http://127.0.0.1:11434', local: true}\n"
        "pricing:\n"
        "  - {model: acme-llm, input_mtok: 1, output_mtok: 2}\n"
        "  - {model_regex: '^acme-', provider: openai, input_mtok: 3, output_mtok: 4,"
        " effective_from: 2025-01-01}\n"
    )
    book = PriceBook.from_config(cfg)
    assert book.cost("acme-llm", TokenUsage(10**6, 0, 0, 10**6, 0), at=T).cost_usd == 3
    ev = book.price_event(UsageEvent(backend="ollama", model="llama3", provider="unknown", input_tokens=5))
    assert ev.price_status == "local" and ev.cost_usd == 0


def test_bad_override_regex_is_a_config_error_with_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("pricing:\n  - {model_regex: '([', input_mtok: 1, output_mtok: 1}\n", "x.yaml")
    assert "x.yaml:2" in str(e.value) and "regular expression" in str(e.value)


# ---------------------------------------------------------------- unpriced, local, events


def test_unknown_model_is_unpriced_never_zero() -> None:
    book = PriceBook()
    r = book.cost("totally-made-up-model-7", U, provider="openai", at=T)
    assert r.cost_usd is None and r.status == "unpriced" and r.cost_nano is None
    assert "totally-made-up-model-7" in r.source
    assert book.lookup("totally-made-up-model-7", at=T) is None
    assert book.why_unpriced("totally-made-up-model-7") is not None
    assert book.why_unpriced("gpt-4o") is None


def test_local() -> None:
    book = PriceBook()
    r = book.cost("gpt-4o", U, local=True)
    assert (r.cost_usd, r.status) == (0, "local")
    ev = UsageEvent(backend="b", model="llama3:8b", provider="local", input_tokens=100, output_tokens=5)
    assert book.price_event(ev).price_status == "local"
    # a local provider without local=True is not given a cloud price either
    assert book.cost("gpt-4o", U, provider="local").status == "unpriced"


def test_price_event_uses_its_timestamp_and_leaves_the_original() -> None:
    book = PriceBook()
    ev = UsageEvent(
        backend="oa",
        model="o3",
        provider="openai",
        timestamp=datetime(2025, 6, 1, tzinfo=UTC),
        input_tokens=1_000_000,
        output_tokens=0,
    )
    priced = book.price_event(ev)
    old = calc_price(
        Usage(input_tokens=1_000_000),
        "o3",
        provider_id="openai",
        genai_request_timestamp=datetime(2025, 6, 1, tzinfo=UTC),
    ).total_price
    assert priced.cost_usd == old and priced.price_status == "priced" and priced.id == ev.id
    assert ev.cost_usd is None and ev.price_status == "unpriced"
    later = book.price_event(ev.with_(timestamp=datetime(2025, 7, 1, tzinfo=UTC)))
    assert later.cost_usd is not None and later.cost_usd < old  # the June 2025 price cut
    unknown = book.price_event(ev.with_(model="no-such-model-x"))
    assert unknown.price_status == "unpriced" and unknown.cost_usd is None


# ---------------------------------------------------------------- the cache never crosses a price change


def test_cache_across_dated_package_change() -> None:
    book = PriceBook()
    u = TokenUsage(2_000_000, 0, 0, 1_000_000, 0)
    instants = [
        datetime(2025, 6, 10, 0, 0, tzinfo=UTC),
        datetime(2025, 6, 9, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2025, 6, 11, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2025, 6, 10, tzinfo=UTC),
    ]
    seen = set()
    for at in instants * 2:
        exp = calc_price(
            Usage(input_tokens=2_000_000, output_tokens=1_000_000),
            "o3",
            provider_id="openai",
            genai_request_timestamp=at,
        ).total_price
        assert book.cost("o3", u, provider="openai", at=at).cost_usd == exp
        seen.add(exp)
    assert len(seen) == 2  # the change really is in the data


def test_cache_across_time_of_day_prices() -> None:
    book = PriceBook()
    u = TokenUsage(1_000_000, 0, 0, 0, 0)
    results = set()
    for hh, mm in [(10, 0), (20, 0), (10, 5), (16, 29), (16, 30), (0, 29), (0, 30), (23, 59), (10, 0)]:
        at = datetime(2025, 9, 15, hh, mm, tzinfo=UTC)
        exp = calc_price(
            Usage(input_tokens=1_000_000), "deepseek-chat", provider_id="deepseek", genai_request_timestamp=at
        ).total_price
        assert book.cost("deepseek-chat", u, provider="deepseek", at=at).cost_usd == exp
        results.add(exp)
    assert len(results) == 2


def test_tiers_use_each_calls_whole_input() -> None:
    book = PriceBook()
    small, big = TokenUsage(100_000, 0, 0, 0, 0), TokenUsage(250_000, 0, 0, 0, 0)
    per_token_small = book.cost("gemini-2.5-pro", small, provider="google", at=T).cost_usd
    per_token_big = book.cost("gemini-2.5-pro", big, provider="google", at=T).cost_usd
    assert per_token_small is not None and per_token_big is not None
    assert per_token_big / 250_000 > per_token_small / 100_000
    info = book.lookup("gemini-2.5-pro", provider="google", at=T)
    assert info is not None and info.tiers["input_mtok"][0][0] == 200_000
    json.dumps(info.to_dict())


def test_naive_time_is_utc_and_now_is_default() -> None:
    book = PriceBook()
    naive = book.cost("deepseek-chat", U, provider="deepseek", at=datetime(2025, 9, 15, 20, 0))
    aware = book.cost("deepseek-chat", U, provider="deepseek", at=datetime(2025, 9, 15, 20, 0, tzinfo=UTC))
    assert naive == aware
    now = calc_price(
        Usage(input_tokens=1000, cache_read_tokens=400, cache_write_tokens=100, output_tokens=10),
        "gpt-4o",
        provider_id="openai",
    ).total_price
    assert book.cost("gpt-4o", U, provider="openai").cost_usd == from_nano(to_nano(now))


# ---------------------------------------------------------------- providers


def test_unknown_provider_finds_the_model() -> None:
    book = PriceBook()
    for prov in ("unknown", None, "ollama-gateway"):
        r = book.cost("claude-3-5-haiku-20241022", U, provider=prov, at=T)
        assert r.status == "priced", prov
    assert book.cost("gpt-4o", U, provider="openai", at=T) == book.cost("gpt-4o", U, provider=None, at=T)


@pytest.mark.parametrize(
    ("model", "base_url", "kind", "expected"),
    [
        ("grok-4", "https://api.x.ai/v1", "openai", "xai"),
        ("deepseek-chat", "https://api.deepseek.com", "openai", "deepseek"),
        ("anthropic/claude-3.5-sonnet", "https://openrouter.ai/api/v1", "openai", "openrouter"),
        ("llama3.1:8b", "http://127.0.0.1:11434", "openai", "local"),
        ("qwen", "http://localhost:8000/v1", "openai", "local"),
        ("gpt-4o", "https://api.openai.com", "openai", "openai"),
        ("claude-sonnet-4-5", "https://gateway.example.com", "anthropic", "anthropic"),
        ("gemini-2.5-pro", "https://generativelanguage.googleapis.com", "gemini", "google"),
        ("mistral-large-latest", "https://api.mistral.ai/v1", "openai", "mistral"),
        ("gpt-4o-mini", None, None, "openai"),
        ("o3-mini", None, None, "openai"),
        ("grok-3", None, None, "xai"),
        ("openai/gpt-4o", None, None, "openai"),
        ("some-model", "https://llm.internal.example", "openai", "unknown"),
        ("", "not a url", None, "unknown"),
    ],
)
def test_provider_for(model: str, base_url: str | None, kind: str | None, expected: str) -> None:
    assert provider_for(model, base_url, kind) == expected


# ---------------------------------------------------------------- estimate_cost, public API, no network


def test_estimate_cost() -> None:
    exp = calc_price(Usage(input_tokens=1000, output_tokens=500), "gpt-4o-mini").total_price
    assert estimate_cost("gpt-4o-mini", 1000, 500) == from_nano(to_nano(exp))
    assert llmbudget.estimate_cost("gpt-4o-mini", 1000, 500) == estimate_cost("gpt-4o-mini", 1000, 500)
    assert estimate_cost("no-such-model-q", 1, 1) is None
    assert llmbudget.PriceBook is PriceBook


def test_config_default_is_an_empty_book() -> None:
    book = PriceBook.from_config(Config())
    assert book.cost("gpt-4o", U, at=T).status == "priced"


def test_no_network_on_import_or_pricing() -> None:
    code = (
        "import socket\n"
        "def boom(*a, **k): raise SystemExit('network used')\n"
        "socket.socket.connect = boom; socket.create_connection = boom; socket.getaddrinfo = boom\n"
        "from llmbudget.pricing import PriceBook, TokenUsage, estimate_cost\n"
        "b = PriceBook(); r = b.cost('gpt-4o', TokenUsage(10, 0, 0, 10, 0))\n"
        "assert r.status == 'priced', r\n"
        "assert estimate_cost('claude-3-5-haiku-latest', 10, 10) is not None\n"
        "import threading; assert threading.active_count() == 1, threading.enumerate()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_context_window_uses_our_provider_names() -> None:
    from genai_prices import data_snapshot

    _, m = data_snapshot.get_snapshot().find_provider_model("grok-3", None, "x-ai", None)
    assert m.context_window and context_window("grok-3", "xai") == m.context_window
    assert context_window("no-such-model-z") is None


_MODELS = [
    ("gpt-4o", "openai", "openai"),
    ("o3", "openai", "openai"),
    ("gemini-2.5-pro", "google", "google"),
    ("claude-sonnet-4-5", "anthropic", "anthropic"),
    ("deepseek-chat", "deepseek", "deepseek"),
    ("deepseek-v4-pro", "deepseek", "deepseek"),
    ("grok-4.20", "xai", "x-ai"),
    ("gemini-1.5-pro", "google", "google"),
]
_BOOK = PriceBook()  # one book for every example: the cache must hold across all of them


@settings(max_examples=300, deadline=None)
@given(
    pick=st.sampled_from(_MODELS),
    when=st.datetimes(
        min_value=datetime(2024, 1, 1),
        max_value=datetime(2027, 6, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-7))]
        ),
    ),
    parts=st.tuples(
        st.integers(0, 400_000), st.integers(0, 400_000), st.integers(0, 400_000), st.integers(0, 100_000)
    ),
)
def test_cached_costs_match_calc_price_at_any_time(
    pick: tuple[str, str, str], when: datetime, parts: tuple[int, int, int, int]
) -> None:
    model, ours, gp = pick
    plain, cr, cw, out = parts
    exp = calc_price(
        Usage(input_tokens=plain + cr + cw, cache_read_tokens=cr, cache_write_tokens=cw, output_tokens=out),
        model,
        provider_id=gp,
        genai_request_timestamp=when,
    ).total_price
    got = _BOOK.cost_nano(model, TokenUsage(plain + cr + cw, cr, cw, out, 0), provider=ours, at=when)
    assert got == (to_nano(exp), "priced")


def test_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmbudget.pricing import book as book_mod

    monkeypatch.setattr(book_mod, "_MAX_KEYS", 3)
    book = PriceBook()
    for i in range(10):
        assert book.cost(f"unknown-{i}", U, at=T).status == "unpriced"
        assert book.cost("gpt-4o", U, provider="openai", at=T).status == "priced"
    assert len(book._cache) <= 3
