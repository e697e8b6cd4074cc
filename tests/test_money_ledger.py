"""Money sums are exact: integer nano-USD all the way through the real ledger and its rollups."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger

TENTH_OF_A_MICRODOLLAR = Decimal("0.0000001")
START = datetime(2026, 3, 31, 20, 0, tzinfo=UTC)


def _stream(n: int) -> Iterator[UsageEvent]:
    step = timedelta(seconds=8 * 3600 / n)  # eight hours, across a day and a month boundary
    for i in range(n):
        yield UsageEvent(
            id=f"money-{i:08d}",
            backend="b",
            model="m",
            provider="p",
            cost_usd=TENTH_OF_A_MICRODOLLAR,
            price_status="priced",
            timestamp=START + i * step,
            source="api",
        )


@pytest.mark.slow
def test_a_million_tenths_of_a_microdollar_make_exactly_ten_cents(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'm.db'}", audit=False) as led:
        assert led.record_many(_stream(1_000_000)) == 1_000_000
        (total,) = led.costs(since=None, until=None)
        assert total.calls == 1_000_000
        assert total.cost_usd == Decimal("0.1")
        assert str(total.cost_usd) == "0.100000000"
        # the same through month buckets (daily + hourly rollups) and a ragged raw-scan edge
        months = led.costs(
            since=START + timedelta(minutes=7, seconds=3), until=START + timedelta(hours=9), by="month"
        )
        assert sum(r.calls for r in months) * TENTH_OF_A_MICRODOLLAR == sum(
            (r.cost_usd for r in months), Decimal(0)
        )


def test_exact_sums_on_postgres(pg_url: str) -> None:
    with open_ledger(pg_url, audit=False) as led:
        assert led.record_many(_stream(20_000)) == 20_000
        (total,) = led.costs(since=None, until=None)
        assert total.cost_usd == Decimal("0.002")
        by_day = led.costs(since=None, until=None, by="day")
        assert [r.key for r in by_day] == ["2026-03-31", "2026-04-01"]
        assert sum((r.cost_usd for r in by_day), Decimal(0)) == Decimal("0.002")
        assert all(r.calls * TENTH_OF_A_MICRODOLLAR == r.cost_usd for r in by_day)
