"""5-hour billing blocks, the way ccusage computes them.

A block starts at its first entry floored to the hour (UTC) and lasts 5 hours; the next
entry after the block's end, or after a gap of more than 5 hours since the last entry,
starts a new block. A gap longer than 5 hours is shown as its own (empty) gap block.

Token counts follow ccusage: `input` is uncached input (cache reads and writes are
separate columns) and the burn rate counts input + output, not cache traffic, which
would otherwise dominate every figure. The burn rate is measured from the block's first
to its last entry; the projection extends it to the block's end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypedDict

from ..events import UsageEvent
from ..money import ZERO, decimal_str

BLOCK_HOURS = 5
_CENT = Decimal("0.01")


class BurnRateDict(TypedDict):
    tokens_per_minute: float
    cost_per_hour_usd: str | None


class ProjectionDict(TypedDict):
    tokens: int
    cost_usd: str | None
    remaining_minutes: int


class BlockDict(TypedDict):
    """A block as `llmbudget analyze --json` shows it."""

    start: str | None
    end: str | None
    first_activity: str | None
    last_activity: str | None
    is_active: bool
    is_gap: bool
    entries: int
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    tokens: int
    total_tokens: int
    cost_usd: str
    unpriced_entries: int
    models: list[str]
    burn_rate: BurnRateDict | None
    projection: ProjectionDict | None


@dataclass(slots=True)
class BurnRate:
    tokens_per_minute: float
    #: None when every entry of the block is unpriced
    cost_per_hour_usd: Decimal | None

    def to_dict(self) -> BurnRateDict:
        return {
            "tokens_per_minute": round(self.tokens_per_minute, 3),
            "cost_per_hour_usd": None
            if self.cost_per_hour_usd is None
            else decimal_str(self.cost_per_hour_usd),
        }


@dataclass(slots=True)
class Projection:
    """What the active block ends at if the current burn rate holds."""

    tokens: int
    cost_usd: Decimal | None
    remaining_minutes: int

    def to_dict(self) -> ProjectionDict:
        return {
            "tokens": self.tokens,
            "cost_usd": None if self.cost_usd is None else decimal_str(self.cost_usd),
            "remaining_minutes": self.remaining_minutes,
        }


@dataclass(slots=True)
class Block:
    """One 5-hour block (or a gap between blocks when `is_gap`)."""

    start: datetime
    end: datetime
    first_activity: datetime | None = None
    #: the actual last activity in the block (None for a gap)
    last_activity: datetime | None = None
    is_active: bool = False
    is_gap: bool = False
    entries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: Decimal = ZERO
    #: entries whose model has no price: the block's cost leaves them out (unknown, not zero)
    unpriced_entries: int = 0
    models: list[str] = field(default_factory=list)
    burn_rate: BurnRate | None = None
    projection: Projection | None = None

    @property
    def tokens(self) -> int:
        """Input + output, the figure burn rates use (cache traffic excluded, as ccusage does)."""
        return self.input_tokens + self.output_tokens

    @property
    def total_tokens(self) -> int:
        return self.tokens + self.cache_write_tokens + self.cache_read_tokens

    def to_dict(self) -> BlockDict:
        def iso(d: datetime | None) -> str | None:
            return None if d is None else d.isoformat().replace("+00:00", "Z")

        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "first_activity": iso(self.first_activity),
            "last_activity": iso(self.last_activity),
            "is_active": self.is_active,
            "is_gap": self.is_gap,
            "entries": self.entries,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "tokens": self.tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": decimal_str(self.cost_usd),
            "unpriced_entries": self.unpriced_entries,
            "models": list(self.models),
            "burn_rate": None if self.burn_rate is None else self.burn_rate.to_dict(),
            "projection": None if self.projection is None else self.projection.to_dict(),
        }


def floor_to_hour(ts: datetime) -> datetime:
    """The start of `ts`'s hour (timestamps are UTC)."""
    return ts.replace(minute=0, second=0, microsecond=0)


def identify_blocks(
    events: Iterable[UsageEvent], *, now: datetime, hours: int = BLOCK_HOURS, gaps: bool = True
) -> list[Block]:
    """Group events into billing blocks, oldest first; the active block gets a burn rate and projection."""
    length = timedelta(hours=hours)
    ordered = sorted(events, key=lambda e: e.timestamp)
    groups: list[tuple[datetime, list[UsageEvent]]] = []
    for ev in ordered:
        if groups:
            start, members = groups[-1]
            last = members[-1].timestamp
            if ev.timestamp - start <= length and ev.timestamp - last <= length:
                members.append(ev)
                continue
        groups.append((floor_to_hour(ev.timestamp), [ev]))
    blocks: list[Block] = []
    for i, (start, members) in enumerate(groups):
        if gaps and i > 0:
            prev_last = groups[i - 1][1][-1].timestamp
            if members[0].timestamp - prev_last > length:
                blocks.append(Block(start=prev_last + length, end=members[0].timestamp, is_gap=True))
        blocks.append(_block(start, members, now, length))
    return blocks


def _block(start: datetime, members: list[UsageEvent], now: datetime, length: timedelta) -> Block:
    end = start + length
    b = Block(start=start, end=end, first_activity=members[0].timestamp, last_activity=members[-1].timestamp)
    models: dict[str, None] = {}
    for ev in members:
        b.entries += 1
        b.input_tokens += ev.input_tokens - ev.cached_input_tokens - ev.cache_write_tokens
        b.output_tokens += ev.output_tokens
        b.cache_write_tokens += ev.cache_write_tokens
        b.cache_read_tokens += ev.cached_input_tokens
        if ev.cost_usd is None:
            b.unpriced_entries += 1
        else:
            b.cost_usd += ev.cost_usd
        models.setdefault(ev.model, None)
    b.models = list(models)
    assert b.last_activity is not None
    b.is_active = now - b.last_activity < length and now < end
    if b.is_active:
        b.burn_rate = burn_rate(b)
        if b.burn_rate is not None:
            b.projection = project(b, b.burn_rate, now)
    return b


def burn_rate(block: Block) -> BurnRate | None:
    """Tokens per minute and USD per hour between the block's first and last entry (None with one instant)."""
    if block.first_activity is None or block.last_activity is None:
        return None
    seconds = (block.last_activity - block.first_activity).total_seconds()
    if seconds <= 0:
        return None
    minutes = seconds / 60
    priced = block.entries > block.unpriced_entries
    cost_h = (
        (block.cost_usd * 3600 / Decimal(repr(seconds))).quantize(Decimal("0.000001")) if priced else None
    )
    return BurnRate(tokens_per_minute=block.tokens / minutes, cost_per_hour_usd=cost_h)


def project(block: Block, rate: BurnRate, now: datetime) -> Projection:
    """The block's totals at its end if `rate` holds from `now`."""
    remaining_s = max(0.0, (block.end - now).total_seconds())
    tokens = block.tokens + round(rate.tokens_per_minute * remaining_s / 60)
    cost: Decimal | None = None
    if rate.cost_per_hour_usd is not None:
        cost = (block.cost_usd + rate.cost_per_hour_usd * Decimal(repr(remaining_s)) / 3600).quantize(_CENT)
    return Projection(tokens=tokens, cost_usd=cost, remaining_minutes=round(remaining_s / 60))


def active_block(blocks: Iterable[Block]) -> Block | None:
    """The block in progress, if any."""
    return next((b for b in blocks if b.is_active), None)
