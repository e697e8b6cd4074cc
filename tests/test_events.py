"""UsageEvent: validation names the field; ids are unique, time-ordered UUIDv7; JSON round-trips."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbudget.errors import ValidationError
from llmbudget.events import UsageEvent, new_id, parse_timestamp


def make(**kw: Any) -> UsageEvent:
    return UsageEvent(**{"backend": "openai", "model": "gpt-4o", **kw})


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"input_tokens": -1}, "input_tokens", "negative"),
        ({"output_tokens": -5}, "output_tokens", "negative"),
        ({"reasoning_tokens": -1}, "reasoning_tokens", "negative"),
        ({"input_tokens": 10, "cached_input_tokens": 11}, "cached_input_tokens", "exceeds input_tokens"),
        (
            {"input_tokens": 10, "cached_input_tokens": 6, "cache_write_tokens": 5},
            "cached_input_tokens",
            "exceeds input_tokens",
        ),
        ({"output_tokens": 3, "reasoning_tokens": 4}, "reasoning_tokens", "exceeds output_tokens"),
        ({"status": "done"}, "status", "unknown status 'done'"),
        ({"price_status": "free"}, "price_status", "unknown price status"),
        ({"source": "magic"}, "source", "unknown source"),
        ({"input_tokens": 1.5}, "input_tokens", "must be an integer"),
        ({"input_tokens": True}, "input_tokens", "must be an integer"),
        ({"cost_usd": Decimal("-0.01"), "price_status": "priced"}, "cost_usd", "negative"),
        ({"cost_usd": 0.5, "price_status": "priced"}, "cost_usd", "must be a Decimal"),
        ({"price_status": "priced"}, "cost_usd", "missing"),
        ({"timestamp": datetime(2026, 1, 1)}, "timestamp", "timezone-aware"),
        ({"backend": ""}, "backend", "non-empty"),
    ],
)
def test_bad_events_are_rejected_naming_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as e:
        make(**changes)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ") and words in str(e.value)


def test_a_good_event_keeps_its_semantics() -> None:
    e = make(
        input_tokens=1000,
        cached_input_tokens=200,
        cache_write_tokens=100,
        output_tokens=50,
        reasoning_tokens=20,
        cost_usd=Decimal("0.0012345678"),
        price_status="priced",
    )
    assert e.total_tokens == 1050
    assert e.cost_nano == 1_234_568  # half-even at the ninth decimal
    assert make().cost_nano is None and make().price_status == "unpriced"


def test_json_round_trip_is_exact() -> None:
    e = make(
        input_tokens=7,
        cost_usd=Decimal("0.000000001"),
        price_status="priced",
        tags={"k": "v"},
        agent="planner",
        streamed=True,
        ttft_ms=12.5,
    )
    d = e.to_dict()
    assert d["timestamp"].endswith("Z") and d["cost_usd"] == "0.000000001"
    assert UsageEvent.from_dict(d) == e


def test_from_dict_rejects_unknown_fields_and_requires_backend_and_model() -> None:
    with pytest.raises(ValidationError, match=r"^colour: unknown field"):
        UsageEvent.from_dict({"backend": "b", "model": "m", "colour": "red"})
    with pytest.raises(ValidationError, match=r"^model: is required"):
        UsageEvent.from_dict({"backend": "b"})
    with pytest.raises(ValidationError, match=r"^cost_usd: not a number"):
        UsageEvent.from_dict({"backend": "b", "model": "m", "cost_usd": "lots", "price_status": "priced"})


def test_from_dict_accepts_nano_cost_when_no_decimal_is_given() -> None:
    e = UsageEvent.from_dict({"backend": "b", "model": "m", "cost_nano": 1500, "price_status": "priced"})
    assert e.cost_usd == Decimal("0.0000015")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-03-29T01:30:00Z", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        ("2026-03-29T03:30:00+02:00", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        ("2026-03-29T01:30:00", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),  # naive log times are UTC
        (1774747800, datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        (
            datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        ),
    ],
)
def test_parse_timestamp(raw: Any, expected: datetime) -> None:
    got = parse_timestamp(raw)
    assert got == expected and got.tzinfo is UTC


@pytest.mark.parametrize("raw", ["yesterday-ish", "", None, [2026]])
def test_parse_timestamp_rejects_garbage_naming_the_field(raw: Any) -> None:
    with pytest.raises(ValidationError, match=r"^timestamp: "):
        parse_timestamp(raw)


def test_ids_are_uuid7_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert {uuid.UUID(i).version for i in ids[:100]} == {7}


def test_forked_processes_draw_different_ids() -> None:
    """Two proxy workers forked from one parent must never produce the same id (they would dedupe)."""
    new_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(w, "".join(new_id()[14:] + "\n" for _ in range(100)).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while data := os.read(r, 65536):
        chunks.append(data)
    os.close(r)
    os.waitpid(pid, 0)
    child = set(b"".join(chunks).decode().split())
    parent = {new_id()[14:] for _ in range(100)}
    assert len(child) == 100 and not child & parent


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_any_consistent_token_split_is_valid(cached: int, extra_in: int, out: int) -> None:
    e = make(
        input_tokens=cached + extra_in, cached_input_tokens=cached, output_tokens=out, reasoning_tokens=out
    )
    assert e.input_tokens >= e.cached_input_tokens and e.output_tokens >= e.reasoning_tokens
