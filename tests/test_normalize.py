"""Token semantics per provider: nothing counted twice, nothing dropped, never a crash on odd shapes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.events import MAX_TOKENS, UsageEvent
from llmbudget.pricing import (
    TokenUsage,
    anthropic_usage,
    gemini_usage,
    openai_chat_usage,
    openai_embeddings_usage,
    openai_responses_usage,
)

NORMALIZERS = [
    openai_chat_usage,
    openai_responses_usage,
    openai_embeddings_usage,
    anthropic_usage,
    gemini_usage,
]


@pytest.mark.parametrize(
    ("fn", "raw", "expected"),
    [
        # OpenAI chat: prompt includes cached, completion includes reasoning
        (
            openai_chat_usage,
            {
                "prompt_tokens": 1000,
                "completion_tokens": 300,
                "total_tokens": 1300,
                "prompt_tokens_details": {"cached_tokens": 600},
                "completion_tokens_details": {"reasoning_tokens": 200},
            },
            TokenUsage(1000, 600, 0, 300, 200),
        ),
        (openai_chat_usage, {"prompt_tokens": 12, "completion_tokens": 5}, TokenUsage(12, 0, 0, 5, 0)),
        # xAI: total = prompt + completion + reasoning, so reasoning is outside completion and is added
        (
            openai_chat_usage,
            {
                "prompt_tokens": 32,
                "completion_tokens": 9,
                "total_tokens": 135,
                "completion_tokens_details": {"reasoning_tokens": 94},
            },
            TokenUsage(32, 0, 0, 103, 94),
        ),
        # xAI older top-level fields
        (
            openai_chat_usage,
            {
                "prompt_tokens": 40,
                "completion_tokens": 10,
                "reasoning_tokens": 30,
                "cached_prompt_text_tokens": 8,
                "total_tokens": 80,
            },
            TokenUsage(40, 8, 0, 40, 30),
        ),
        # DeepSeek: cache hit/miss split of prompt_tokens
        (
            openai_chat_usage,
            {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_cache_hit_tokens": 64,
                "prompt_cache_miss_tokens": 36,
            },
            TokenUsage(100, 64, 0, 20, 0),
        ),
        (
            openai_chat_usage,
            {"prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36, "completion_tokens": 1},
            TokenUsage(100, 64, 0, 1, 0),
        ),
        # OpenRouter reports cache writes in the details
        (
            openai_chat_usage,
            {
                "prompt_tokens": 500,
                "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 300},
            },
            TokenUsage(500, 100, 300, 7, 0),
        ),
        (
            openai_responses_usage,
            {
                "input_tokens": 900,
                "input_tokens_details": {"cached_tokens": 512},
                "output_tokens": 80,
                "output_tokens_details": {"reasoning_tokens": 64},
                "total_tokens": 980,
            },
            TokenUsage(900, 512, 0, 80, 64),
        ),
        (openai_embeddings_usage, {"prompt_tokens": 8, "total_tokens": 8}, TokenUsage(8, 0, 0, 0, 0)),
        # Anthropic: input excludes cache reads and writes
        (
            anthropic_usage,
            {
                "input_tokens": 10,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 200,
                "output_tokens": 55,
            },
            TokenUsage(1210, 1000, 200, 55, 0),
        ),
        (
            anthropic_usage,
            {
                "input_tokens": 3,
                "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60},
                "output_tokens": 1,
            },
            TokenUsage(103, 0, 100, 1, 0, 60),
        ),
        (anthropic_usage, {"output_tokens": 99}, TokenUsage(0, 0, 0, 99, 0)),  # message_delta
        # Gemini: prompt includes cached; thoughts are outside candidates
        (
            gemini_usage,
            {
                "promptTokenCount": 2000,
                "cachedContentTokenCount": 1500,
                "candidatesTokenCount": 100,
                "thoughtsTokenCount": 400,
                "totalTokenCount": 2500,
            },
            TokenUsage(2000, 1500, 0, 500, 400),
        ),
        (
            gemini_usage,
            {"promptTokenCount": 50, "toolUsePromptTokenCount": 25, "candidatesTokenCount": 5},
            TokenUsage(75, 0, 0, 5, 0),
        ),
    ],
)
def test_provider_semantics(fn: Any, raw: dict[str, Any], expected: TokenUsage) -> None:
    assert fn(raw) == expected


@pytest.mark.parametrize("fn", NORMALIZERS)
@pytest.mark.parametrize(
    "raw",
    [
        None,
        3,
        "x",
        [],
        {},
        {"prompt_tokens": None},
        {"usage": {"a": 1}},
        {"input_tokens": True},
        {"input_tokens": -5},
        {"prompt_tokens": float("nan")},
        {"promptTokenCount": "12x"},
    ],
)
def test_odd_shapes_give_zeros(fn: Any, raw: Any) -> None:
    assert fn(raw) == TokenUsage()


def test_numeric_strings_and_floats_are_counted() -> None:
    assert openai_chat_usage({"prompt_tokens": "12", "completion_tokens": 3.0}) == TokenUsage(12, 0, 0, 3, 0)
    assert gemini_usage({"promptTokenCount": Decimal(7)}).input_tokens == 7


@pytest.mark.parametrize("odd", ["²", "١٢", "9" * 5000, "-3", "1e3", " "])
def test_odd_numeric_strings_count_as_zero_never_raise(odd: str) -> None:
    # str.isdigit() accepts superscripts and other scripts that int() refuses or reads differently
    assert openai_chat_usage({"prompt_tokens": odd, "completion_tokens": 2}) == TokenUsage(0, 0, 0, 2, 0)


def test_inconsistent_parts_raise_the_total_not_cut_the_part() -> None:
    # a server that reports more cached than prompt tokens: never under-count the input
    u = openai_chat_usage(
        {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 50}}
    )
    assert (u.input_tokens, u.cached_input_tokens) == (50, 50)
    assert (
        openai_chat_usage(
            {
                "prompt_tokens": 1,
                "completion_tokens": 10,
                "completion_tokens_details": {"reasoning_tokens": 4},
            },
            reasoning_in_completion=False,
        ).output_tokens
        == 14
    )


def test_merge_max_for_cumulative_anthropic_stream() -> None:
    start = anthropic_usage({"input_tokens": 20, "cache_read_input_tokens": 500, "output_tokens": 1})
    delta1 = anthropic_usage({"output_tokens": 40})
    delta2 = anthropic_usage({"output_tokens": 95})
    total = start.merge_max(delta1).merge_max(delta2).merge_max(None)
    assert total == TokenUsage(520, 500, 0, 95, 0)


def test_add_and_helpers() -> None:
    a, b = TokenUsage(10, 2, 1, 5, 1), TokenUsage(1, 0, 0, 2, 0)
    assert a + b == TokenUsage(11, 2, 1, 7, 1)
    assert a.uncached_input_tokens == 7 and a.total_tokens == 15
    assert not TokenUsage() and a
    ev = UsageEvent(backend="b", model="m", **a.as_dict())
    assert TokenUsage.from_event(ev) == a


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**12)
    | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "cached_prompt_text_tokens",
        "cached_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "promptTokenCount",
        "candidatesTokenCount",
        "cachedContentTokenCount",
        "thoughtsTokenCount",
        "toolUsePromptTokenCount",
    ]
)
_counts = st.none() | st.booleans() | st.integers(-100, 10**9) | st.floats() | st.text(max_size=4)
_details = st.dictionaries(
    st.sampled_from(["cached_tokens", "reasoning_tokens", "cache_write_tokens"]), _counts
)
_usage_dicts = st.dictionaries(_keys, _counts) | st.fixed_dictionaries(
    {"prompt_tokens": _counts, "completion_tokens": _counts},
    optional={
        "prompt_tokens_details": _details | _json,
        "completion_tokens_details": _details | _json,
        "input_tokens_details": _details,
        "output_tokens_details": _details,
        "cache_creation": st.dictionaries(
            st.sampled_from(["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]), _counts
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(raw=_usage_dicts | _json)
def test_normalize_never_raises_and_keeps_invariants(raw: Any) -> None:
    for fn in NORMALIZERS:
        u = fn(raw)
        assert isinstance(u, TokenUsage)
        d = u.as_dict()
        units, tier = d.pop("units"), d.pop("service_tier")
        for v in [*d.values(), *units.values()]:
            assert type(v) is int and v >= 0
        assert tier is None or (isinstance(tier, str) and tier)
        assert u.cache_write_1h_tokens <= u.cache_write_tokens
        assert u.cached_input_tokens + u.cache_write_tokens <= u.input_tokens
        assert u.cached_input_tokens <= u.input_tokens
        assert u.reasoning_tokens <= u.output_tokens
        if max([*d.values(), *units.values()]) <= MAX_TOKENS:  # past the bound the proxy records an estimate
            UsageEvent(backend="b", model="m", **u.as_dict())  # always a valid event


@settings(max_examples=200, deadline=None)
@given(p=st.integers(0, 10**9), c=st.integers(0, 10**9), r=st.integers(0, 10**9), o=st.integers(0, 10**9))
def test_openai_counts_are_preserved(p: int, c: int, r: int, o: int) -> None:
    c, r = min(c, p), min(r, o)  # a well-formed OpenAI report
    u = openai_chat_usage(
        {
            "prompt_tokens": p,
            "completion_tokens": o,
            "prompt_tokens_details": {"cached_tokens": c},
            "completion_tokens_details": {"reasoning_tokens": r},
        },
        reasoning_in_completion=True,
    )
    assert u == TokenUsage(p, c, 0, o, r)


@settings(max_examples=200, deadline=None)
@given(i=st.integers(0, 10**9), cr=st.integers(0, 10**9), cw=st.integers(0, 10**9), o=st.integers(0, 10**9))
def test_anthropic_adds_cache_to_input(i: int, cr: int, cw: int, o: int) -> None:
    u = anthropic_usage(
        {
            "input_tokens": i,
            "cache_read_input_tokens": cr,
            "cache_creation_input_tokens": cw,
            "output_tokens": o,
        }
    )
    assert u.input_tokens == i + cr + cw and u.uncached_input_tokens == i


# ------------------------------------------------------------------ the plain chat shortcut
_N = st.integers(min_value=0, max_value=10**13)
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=10**13),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["12", "x", ""]),
)
_DETAIL_KEYS = st.sampled_from(
    ["cached_tokens", "cache_write_tokens", "audio_tokens", "image_tokens", "reasoning_tokens", "text_tokens"]
)


def _chat_usage(count: Any, details: Any) -> Any:
    return st.fixed_dictionaries(
        {"prompt_tokens": count, "completion_tokens": count},
        optional={
            "total_tokens": count,
            "prompt_tokens_details": details,
            "completion_tokens_details": details,
        },
    )


#: OpenAI's own shape with plain counts (what the shortcut reads) and with anything in any field
_PLAIN_USAGE = _chat_usage(_N, st.one_of(st.none(), st.dictionaries(_DETAIL_KEYS, _N, max_size=4)))
_ODD_USAGE = _chat_usage(
    _ANY,
    st.one_of(
        st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(_DETAIL_KEYS, _ANY, max_size=4)
    ),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_PLAIN_USAGE, _ODD_USAGE), st.sampled_from([None, True, False]))
def test_plain_chat_shortcut_reads_exactly_as_the_general_reading(
    usage: dict[str, Any], in_completion: bool | None
) -> None:
    from llmbudget.pricing.normalize import _general_chat_usage

    assert openai_chat_usage(usage, reasoning_in_completion=in_completion) == _general_chat_usage(
        usage, in_completion
    )
