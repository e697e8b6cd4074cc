"""5-hour billing blocks over the fixture Claude Code logs, with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from llmbudget.events import UsageEvent
from llmbudget.quota import blocks as bl
from llmbudget.quota import claude_code as cc

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


def _ev(ts: datetime, inp: int = 100, out: int = 50, cost: str | None = "0.01", **kw: object) -> UsageEvent:
    return UsageEvent(
        backend="claude-code",
        model=str(kw.get("model", "claude-sonnet-4-5")),
        timestamp=ts,
        input_tokens=inp,
        output_tokens=out,
        cost_usd=None if cost is None else Decimal(cost),
        price_status="unpriced" if cost is None else "priced",
    )


def test_fixture_blocks() -> None:
    events, _ = cc.load_events([FIXTURES], prices=None)
    blocks = bl.identify_blocks(events, now=NOW)
    real = [b for b in blocks if not b.is_gap]
    assert [(b.start, b.end) for b in real] == [
        (datetime(2026, 11, 18, 20, tzinfo=UTC), datetime(2026, 11, 19, 1, tzinfo=UTC)),
        (datetime(2026, 11, 20, 9, tzinfo=UTC), datetime(2026, 11, 20, 14, tzinfo=UTC)),
        # 14:20 is more than 5 h after the 09:00 start: a new block, floored to 14:00
        (datetime(2026, 11, 20, 14, tzinfo=UTC), datetime(2026, 11, 20, 19, tzinfo=UTC)),
    ]
    assert [b.entries for b in real] == [1, 5, 3]
    gap = blocks[1]
    assert gap.is_gap and gap.entries == 0
    assert gap.start == datetime(2026, 11, 19, 1, 31, tzinfo=UTC)  # 5 h after the last activity
    assert [b.is_active for b in blocks] == [False, False, False, True]
    morning = real[1]
    assert morning.last_activity == datetime(2026, 11, 20, 13, 50, tzinfo=UTC)
    # uncached input / output / cache columns summed over the five de-duplicated responses
    assert morning.input_tokens == 12 + 8 + 20 + 30 + 100
    assert morning.output_tokens == 410 + 950 + 1200 + 2400 + 500
    assert morning.cache_write_tokens == 4200 + 1500 + 2000 + 6000
    assert morning.cache_read_tokens == 11800 + 16000 + 18000 + 20000 + 26000
    assert morning.burn_rate is None and morning.projection is None


def test_active_block_burn_rate_and_projection() -> None:
    events, _ = cc.load_events([FIXTURES], prices=None)
    active = bl.active_block(bl.identify_blocks(events, now=NOW))
    assert active is not None
    assert active.tokens == (40 + 600) + (10 + 1400) + (50 + 1000)
    assert active.burn_rate is not None and active.projection is not None
    # 3100 tokens between 14:20 and 15:10 (50 minutes)
    assert active.burn_rate.tokens_per_minute == pytest.approx(62.0)
    assert active.projection.remaining_minutes == 210  # 15:30 -> 19:00
    assert active.projection.tokens == 3100 + 62 * 210
    # priced with no price book: every entry unpriced, so no cost rate is claimed
    assert active.burn_rate.cost_per_hour_usd is None and active.projection.cost_usd is None
    assert active.unpriced_entries == 3


def test_cost_burn_rate() -> None:
    t0 = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    events = [
        _ev(t0, cost="0.50"),
        _ev(t0 + timedelta(minutes=30), cost="0.25"),
        _ev(t0 + timedelta(minutes=45), cost=None),
    ]
    now = t0 + timedelta(hours=1)  # 11:30; the block runs 10:00-15:00
    (b,) = bl.identify_blocks(events, now=now)
    assert b.cost_usd == Decimal("0.75") and b.unpriced_entries == 1
    assert b.burn_rate is not None and b.projection is not None
    assert b.burn_rate.cost_per_hour_usd == Decimal("1.000000")  # $0.75 over 45 minutes
    assert b.projection.cost_usd == Decimal("4.25")  # + 3.5 h at $1/h
    assert b.burn_rate.tokens_per_minute == pytest.approx(450 / 45)


@pytest.mark.parametrize(
    ("offsets_min", "expected_starts"),
    [
        ([0, 299], ["10:00"]),
        ([0, 300], ["10:00"]),  # exactly 5 h after the floored start still belongs to it
        ([0, 301], ["10:00", "15:00"]),  # 15:01 floored to the hour
        ([0, 120, 240, 310], ["10:00", "15:00"]),  # past the block's end, although the gap is short
    ],
)
def test_block_boundaries(offsets_min: list[int], expected_starts: list[str]) -> None:
    t0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    events = [_ev(t0 + timedelta(minutes=m)) for m in offsets_min]
    blocks = bl.identify_blocks(events, now=t0 + timedelta(days=2), gaps=False)
    starts = [b.start.strftime("%H:%M") for b in blocks]
    assert starts == expected_starts
    assert not any(b.is_active for b in blocks)


def test_inactive_after_five_idle_hours_and_single_entry_has_no_rate() -> None:
    t0 = datetime(2026, 1, 1, 10, 10, tzinfo=UTC)
    (b,) = bl.identify_blocks([_ev(t0)], now=t0 + timedelta(minutes=20))
    assert b.is_active and b.burn_rate is None and b.projection is None
    (b,) = bl.identify_blocks([_ev(t0)], now=datetime(2026, 1, 1, 15, 0, tzinfo=UTC))
    assert not b.is_active  # the block ended at 15:00


def test_no_events_no_blocks() -> None:
    assert bl.identify_blocks([], now=NOW) == []
