"""Rate-limit header parsers: recorded real-world header sets, malformed values, hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.quota.headers import format_go_duration, parse_go_duration, parse_rate_limit_headers

NOW = datetime(2025, 7, 22, 12, 0, 0, tzinfo=UTC)

# Recorded from Claude Code traffic on a Max plan (values changed, names verbatim).
UNIFIED = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-reset": "1753203600",
    "anthropic-ratelimit-unified-5h-utilization": "0.42",
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-reset": "1753560000",
    "anthropic-ratelimit-unified-7d-utilization": "0.87",
    "anthropic-ratelimit-unified-7d_oi-utilization": "0.15",
    "anthropic-ratelimit-unified-7d_oi-reset": "1753560000",
    "anthropic-ratelimit-unified-representative-claim": "seven_day",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-reset": "1753560000",
    "anthropic-ratelimit-unified-overage-status": "rejected",
    "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    "request-id": "req_011CRMxyz",
}

ANTHROPIC_API = {
    "Anthropic-RateLimit-Requests-Limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2025-07-22T12:00:01Z",
    "anthropic-ratelimit-tokens-limit": "90000",
    "anthropic-ratelimit-tokens-remaining": "89000",
    "anthropic-ratelimit-tokens-reset": "2025-07-22T14:00:06+02:00",
    "anthropic-ratelimit-input-tokens-limit": "40000",
    "anthropic-ratelimit-input-tokens-remaining": "40000",
    "anthropic-ratelimit-input-tokens-reset": "2025-07-22T12:00:00.123456Z",
    "anthropic-ratelimit-output-tokens-limit": "8000",
    "anthropic-ratelimit-output-tokens-remaining": "0",
    "anthropic-ratelimit-output-tokens-reset": "2025-07-22T12:00:30Z",
    "retry-after": "30",
    "x-api-key": "sk-ant-secret",
}

OPENAI = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999990",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "1h2m3.5s",
    "openai-organization": "org-x",
    "authorization": "Bearer sk-secret",
}

XAI = {  # xAI sends -1 where a bucket does not apply
    "x-ratelimit-limit-requests": "-1",
    "x-ratelimit-remaining-requests": "-1",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-tokens": "1999000",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_no_rate_limit_headers_gives_none() -> None:
    assert parse_rate_limit_headers({"content-type": "application/json"}, now=NOW) is None
    assert parse_rate_limit_headers({}, now=NOW) is None


def test_anthropic_unified_every_window() -> None:
    r = parse_rate_limit_headers(UNIFIED, now=NOW, backend="max1")
    assert r is not None and r.reason is None
    assert r.provider == "anthropic-unified" and r.backend == "max1" and r.source == "piggyback"
    assert r.status == "allowed"
    assert r.windows["5h"].utilization == pytest.approx(0.42)
    assert r.windows["5h"].reset == datetime.fromtimestamp(1753203600, UTC)
    assert r.windows["7d"].utilization == pytest.approx(0.87)
    assert r.windows["7d"].status == "allowed"
    assert r.windows["7d_oi"].utilization == pytest.approx(0.15)
    assert r.representative_claim == "seven_day"
    assert r.fallback_percentage == pytest.approx(0.5)
    assert r.reset == datetime.fromtimestamp(1753560000, UTC)
    assert r.overage_status == "rejected"
    assert r.extra["unified"] == {"overage-disabled-reason": "org_level_disabled"}
    assert "request-id" not in r.raw and "anthropic-ratelimit-unified-status" in r.raw


def test_anthropic_api_limits_rfc3339_z_and_offset() -> None:
    r = parse_rate_limit_headers(ANTHROPIC_API, now=NOW)
    assert r is not None and r.reason is None, r.reason
    assert r.provider == "anthropic-api"
    assert r.limits["requests"].limit == 50 and r.limits["requests"].remaining == 49
    assert r.limits["requests"].reset == datetime(2025, 7, 22, 12, 0, 1, tzinfo=UTC)
    # the +02:00 offset is the same instant as 12:00:06Z
    assert r.limits["tokens"].reset == datetime(2025, 7, 22, 12, 0, 6, tzinfo=UTC)
    assert r.limits["input_tokens"].reset == datetime(2025, 7, 22, 12, 0, 0, 123456, tzinfo=UTC)
    assert r.limits["output_tokens"].remaining == 0
    assert r.retry_after_s == 30
    assert all("key" not in k and "authorization" not in k for k in r.raw)
    assert "sk-ant-secret" not in str(r.to_dict())


def test_openai_go_durations() -> None:
    r = parse_rate_limit_headers(OPENAI, now=NOW)
    assert r is not None and r.reason is None
    assert r.provider == "openai"
    assert r.limits["requests"].reset == NOW + timedelta(milliseconds=6)
    assert r.limits["tokens"].reset == NOW + timedelta(hours=1, minutes=2, seconds=3.5)
    assert r.limits["tokens"].remaining == 29999990
    assert "sk-secret" not in str(r.to_dict())


def test_xai_minus_one_means_no_limit() -> None:
    r = parse_rate_limit_headers(XAI, now=NOW, provider="xai")
    assert r is not None and r.reason is None
    assert r.provider == "xai"
    req = r.limits["requests"]
    assert req.unlimited and req.limit is None and req.remaining is None
    assert r.limits["tokens"].reset == NOW + timedelta(minutes=6)


def test_openrouter_bare_headers_epoch_ms() -> None:
    r = parse_rate_limit_headers(
        {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1753185660000"},
        now=NOW,
    )
    assert r is not None and r.reason is None
    assert r.limits["requests"].remaining == 0
    assert r.limits["requests"].reset == datetime.fromtimestamp(1753185660, UTC)


def test_cost_headers() -> None:
    r = parse_rate_limit_headers(
        {
            "x-litellm-response-cost": "0.000415",
            "x-litellm-key-spend": "12.5",
            "x-litellm-key-max-budget": "20.0",
        },
        now=NOW,
    )
    assert r is not None and r.reason is None
    assert r.provider == "cost-header-proxy"
    assert r.cost_usd == Decimal("0.000415")
    assert r.credit_usd == Decimal("7.5")
    r2 = parse_rate_limit_headers(
        {"X-LLMBudget-Cost-USD": "0.25", "x-litellm-key-max-budget": "None"}, now=NOW
    )
    assert r2 is not None and r2.cost_usd == Decimal("0.25") and r2.limit_usd is None and r2.reason is None


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"anthropic-ratelimit-unified-5h-utilization": "lots"}, "5h-utilization: not a number"),
        ({"anthropic-ratelimit-unified-5h-utilization": "nan"}, "not a finite number"),
        ({"anthropic-ratelimit-unified-7d-utilization": "-0.2"}, "negative utilization"),
        ({"anthropic-ratelimit-unified-5h-reset": "tomorrow"}, "not unix seconds"),
        ({"anthropic-ratelimit-unified-5h-reset": "1e30"}, "out of range"),
        ({"anthropic-ratelimit-requests-reset": "soon"}, "not an RFC 3339 time"),
        ({"anthropic-ratelimit-tokens-remaining": "12.5"}, "not a count"),
        ({"x-ratelimit-reset-tokens": "6 minutes"}, "not a Go duration"),
        ({"x-ratelimit-limit-requests": ""}, "not a number"),
        ({"x-litellm-response-cost": "free"}, "not a USD amount"),
        ({"x-litellm-response-cost": "-1"}, "non-negative"),
        ({"retry-after": "later"}, "retry-after"),
    ],
)
def test_malformed_values_give_a_reason(headers: dict[str, str], fragment: str) -> None:
    r = parse_rate_limit_headers(headers, now=NOW)
    assert r is not None
    assert r.reason is not None and fragment in r.reason


def test_one_bad_value_keeps_the_rest() -> None:
    h = dict(UNIFIED, **{"anthropic-ratelimit-unified-5h-utilization": "garbage"})
    r = parse_rate_limit_headers(h, now=NOW)
    assert r is not None and r.reason and "5h-utilization" in r.reason
    assert r.windows["5h"].utilization is None
    assert r.windows["7d"].utilization == pytest.approx(0.87)


def test_retry_after_http_date() -> None:
    r = parse_rate_limit_headers({"retry-after": "Tue, 22 Jul 2025 12:01:00 GMT"}, now=NOW)
    assert r is not None and r.retry_after_s == 60


def test_header_pairs_and_repeated_names() -> None:
    r = parse_rate_limit_headers(
        [("X-RateLimit-Remaining-Requests", "5"), ("x-ratelimit-remaining-requests", "7")], now=NOW
    )
    assert r is not None and r.limits["requests"].remaining == 5


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        ("-1.5h", -5400.0),
        ("300us", 0.0003),
        ("300µs", 0.0003),
        ("2h45m", 9900.0),
        (".5s", 0.5),
        ("10ns", 1e-8),
    ],
)
def test_go_duration_table(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "abc", "6 m", "1h-2m", "s", "1d", "1.2.3s", "+", "--1s"])
def test_go_duration_malformed(text: str) -> None:
    assert parse_go_duration(text) is None


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=40), st.text(max_size=40), max_size=8))
def test_arbitrary_headers_never_raise(headers: dict[str, str]) -> None:
    parse_rate_limit_headers(headers, now=NOW)


_PREFIXES = [
    "anthropic-ratelimit-unified-",
    "anthropic-ratelimit-",
    "x-ratelimit-",
    "x-litellm-",
    "retry-after",
    "x-ratelimit-reset-",
    "anthropic-ratelimit-unified-5h-",
]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.builds(
            lambda p, s: p + s,
            st.sampled_from(_PREFIXES),
            st.sampled_from(
                [
                    "status",
                    "reset",
                    "5h-utilization",
                    "7d_oi-reset",
                    "limit-requests",
                    "reset-tokens",
                    "requests-reset",
                    "tokens-remaining",
                    "response-cost",
                    "key-spend",
                    "key-max-budget",
                    "",
                    "-ms",
                    "x",
                ]
            ),
        ),
        st.one_of(st.text(max_size=30), st.floats().map(str), st.integers().map(str)),
        min_size=1,
        max_size=8,
    )
)
def test_rate_limit_shaped_garbage_never_raises(headers: dict[str, str]) -> None:
    r = parse_rate_limit_headers(headers, now=NOW)
    if any(k.startswith(("anthropic-ratelimit-", "x-ratelimit-", "retry-after")) for k in headers):
        assert r is not None
    if r is not None:
        # a reading always serializes and reloads, whatever came in
        from llmbudget.quota.readings import QuotaReading

        assert QuotaReading.from_dict(r.to_dict()).to_dict() == r.to_dict()


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda x: round(x, 3)))
def test_go_duration_round_trip(seconds: float) -> None:
    assert parse_go_duration(format_go_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=0, max_value=5, allow_nan=False), st.integers(min_value=0, max_value=4_000_000_000)
)
def test_unified_round_trip(util: float, reset: int) -> None:
    r = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-unified-5h-utilization": repr(util),
            "anthropic-ratelimit-unified-5h-reset": str(reset),
        },
        now=NOW,
    )
    assert r is not None and r.reason is None
    assert r.windows["5h"].utilization == util
    w = r.windows["5h"].reset
    assert w is not None and int(w.timestamp()) == reset


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(min_value=-12, max_value=12),
    st.integers(min_value=0, max_value=10**9),
)
def test_rfc3339_round_trip(dt: datetime, offset_h: int, remaining: int) -> None:
    from datetime import timezone

    local = dt.astimezone(timezone(timedelta(hours=offset_h)))
    r = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-tokens-reset": local.isoformat(),
            "anthropic-ratelimit-tokens-remaining": str(remaining),
        },
        now=NOW,
    )
    assert r is not None and r.reason is None
    assert r.limits["tokens"].reset == dt
    assert r.limits["tokens"].remaining == remaining
