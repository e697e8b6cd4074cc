"""CSV/JSON writers: formula injection neutralized in text, numbers untouched, streaming shapes."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbudget.events import UsageEvent
from llmbudget.export import (
    EVENT_COLUMNS,
    FORMULA_PREFIXES,
    csv_cell,
    neutralize,
    write_events_csv,
    write_json_array,
    write_json_lines,
    write_rows_csv,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1:A2)", "'+SUM(A1:A2)"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(1)", "'@SUM(1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ('  =HYPERLINK("http://x")', '\'  =HYPERLINK("http://x")'),
        ("-1", "'-1"),  # text that looks like a number is still text
        ("planner", "planner"),
        ("gpt-4o", "gpt-4o"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_neutralize(text: str, expected: str) -> None:
    assert neutralize(text) == expected


@given(st.text())
def test_neutralized_text_never_starts_a_formula(text: str) -> None:
    out = neutralize(text)
    assert not out.lstrip(" ")[:1] or out.lstrip(" ")[0] not in FORMULA_PREFIXES
    assert out in (text, "'" + text)


def test_numbers_are_left_alone() -> None:
    assert csv_cell(12) == 12
    assert csv_cell(Decimal("0.000001")) == "0.000001"  # a plain decimal, never neutralized
    assert csv_cell(Decimal("0E-9")) == "0.000000000"  # never an exponent
    assert csv_cell(None) == ""
    assert csv_cell(True) == "true"
    assert csv_cell({"k": "=x"}) == '{"k": "=x"}'


def _event(**kw: object) -> UsageEvent:
    base: dict[str, object] = dict(
        backend="openai",
        model="gpt-4o",
        input_tokens=100,
        output_tokens=20,
        cost_usd=Decimal("0.00045"),
        price_status="priced",
        timestamp=datetime(2025, 3, 1, 12, tzinfo=UTC),
    )
    base.update(kw)
    return UsageEvent(**base)  # type: ignore[arg-type]


def test_events_csv_round_trip_and_injection() -> None:
    evs = [
        _event(agent="=cmd|' /C calc'!A0", session="s1", tags={"project": "@evil"}),
        _event(model="mystery", cost_usd=None, price_status="unpriced", agent="-1", user='a "quoted", user'),
    ]
    buf = io.StringIO()
    seen: list[int] = []
    assert write_events_csv(evs, buf, on_row=seen.append) == 2
    assert seen == [1, 2]
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert tuple(rows[0]) == EVENT_COLUMNS
    assert rows[0]["agent"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["cost_usd"] == "0.00045"
    assert rows[0]["input_tokens"] == "100"
    assert rows[0]["timestamp"] == "2025-03-01T12:00:00Z"
    assert json.loads(rows[0]["tags"]) == {"project": "@evil"}  # JSON object text starts with {: safe
    assert rows[1]["cost_usd"] == ""  # unpriced: empty, never 0
    assert rows[1]["price_status"] == "unpriced"
    assert rows[1]["agent"] == "'-1"
    assert rows[1]["user"] == 'a "quoted", user'
    assert rows[0]["id"] == evs[0].id


def test_json_lines_round_trip() -> None:
    evs = [_event(agent="a"), _event(cost_usd=None, price_status="unpriced", model="x")]
    buf = io.StringIO()
    assert write_json_lines(evs, buf) == 2
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    back = [UsageEvent.from_dict(json.loads(line)) for line in lines]
    assert back == evs


@pytest.mark.parametrize("count", [0, 1, 3])
def test_json_array_is_valid_json(count: int) -> None:
    evs = [_event(agent=f"a{i}") for i in range(count)]
    buf = io.StringIO()
    assert write_json_array(iter(evs), buf) == count
    data = json.loads(buf.getvalue())
    assert [d["agent"] for d in data] == [f"a{i}" for i in range(count)]


def test_rows_csv() -> None:
    buf = io.StringIO()
    n = write_rows_csv(
        [{"key": "=evil", "calls": 3, "cost_usd": "0.5"}, {"key": None, "calls": 1}],
        ["key", "calls", "cost_usd"],
        buf,
    )
    assert n == 2
    assert buf.getvalue().splitlines() == ["key,calls,cost_usd", "'=evil,3,0.5", ",1,"]
