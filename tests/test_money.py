"""Money: Decimal in code, integer nano-USD in storage, exact sums."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbudget.money import format_exact, format_usd, from_nano, to_nano, usd


@pytest.mark.parametrize(
    ("amount", "nanos"),
    [
        (Decimal("0.1"), 100_000_000),
        (Decimal("0.0000001"), 100),
        (Decimal("0.0000000015"), 2),  # half-even: 1.5 -> 2
        (Decimal("0.0000000025"), 2),  # half-even: 2.5 -> 2
        (Decimal("123456.789"), 123_456_789_000_000),
        ("0.000000001", 1),
        (3, 3_000_000_000),
    ],
)
def test_to_nano(amount: Decimal | str | int, nanos: int) -> None:
    assert to_nano(amount) == nanos


def test_floats_are_refused_in_storage_conversion() -> None:
    with pytest.raises(TypeError, match="not float"):
        to_nano(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a money amount"):
        to_nano("ten dollars")


def test_user_amounts_from_yaml_floats_keep_their_written_digits() -> None:
    assert usd(0.1) == Decimal("0.1") and usd("20.00") == Decimal("20.00")


def test_a_million_tiny_amounts_sum_exactly() -> None:
    assert from_nano(sum(to_nano(Decimal("0.0000001")) for _ in range(1_000_000))) == Decimal("0.1")


@given(st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False, allow_infinity=False))
def test_nano_round_trip_is_exact_at_nine_places(d: Decimal) -> None:
    assert from_nano(to_nano(d)) == d


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (None, "unpriced"),
        (Decimal("1234.5"), "$1,234.5000"),
        (Decimal("0.00001"), "$0.00001"),  # a real amount is never shown as $0 nor as "<$0.0001"
        (Decimal("0.000000001"), "$0.000000001"),
        (Decimal("0E-9"), "$0.0000"),
        (Decimal(0), "$0.0000"),
    ],
)
def test_format_usd(amount: Decimal | None, text: str) -> None:
    assert format_usd(amount) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0.001"), "$0.001"),
        (Decimal("0.001000000"), "$0.001"),
        (Decimal("0.015"), "$0.015"),
        (Decimal("5"), "$5.00"),
        (Decimal("5.000000000"), "$5.00"),
        (Decimal("1E+3"), "$1,000.00"),
        (Decimal("0.000000001"), "$0.000000001"),
        (Decimal("0E-9"), "$0.00"),
    ],
)
def test_format_exact_shows_a_limit_as_configured(amount: Decimal, text: str) -> None:
    assert format_exact(amount) == text
