"""The events table as Python sees it: columns in storage order, the row codec, filters and time ranges.

An event is stored as one row in `EVENT_COLUMNS` order (`event_to_row`, `row_to_event`); an
attribution field's column can differ from its name (`column`, from the attribution table).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from .. import attribution_table
from ..errors import ValidationError
from ..events import UsageEvent
from ..money import from_nano, to_nano
from .base import FILTER_FIELDS
from .buckets import EPOCH, from_us, to_us
from .migrations import ROLLUP_DIMS

#: event columns in storage order; `user` is stored as `user_name`
EVENT_COLUMNS = (
    "id",
    "ts_us",
    "backend",
    "provider",
    "model",
    "request_model",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nano",
    "price_status",
    "agent",
    "session",
    "user_name",
    "team",
    "task_id",
    "task_type",
    "tier",
    "tags",
    "status",
    "http_status",
    "streamed",
    "duration_ms",
    "ttft_ms",
    "source",
    "key",
    "cache_write_1h_tokens",
    "service_tier",
    "units",
    "reason",
)
#: event field -> column where they differ (only attribution fields do: `attribution_table`)
COLUMN_OF = attribution_table.COLUMN_OF
#: the dimension fields kept in the rollups (event attribute names)
ROLLUP_FIELDS = tuple("user" if c == "user_name" else c for c in ROLLUP_DIMS)
SUM_COLUMNS = (
    "calls",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nano",
    "unpriced_calls",
)
_ONE_US = timedelta(microseconds=1)


def column(field: str) -> str:
    """The events column of an event field."""
    return COLUMN_OF.get(field, field)


def event_to_row(ev: UsageEvent) -> tuple[Any, ...]:
    """A UsageEvent as a row in EVENT_COLUMNS order."""
    c = ev.cost_usd
    if c is None:
        nano = None
    else:  # to_nano() without its type checks: the event was validated; exact unless finer than 1e-9
        scaled = c.scaleb(9)
        nano = int(scaled)
        if nano != scaled:
            nano = to_nano(c)
    return (
        ev.id,
        (ev.timestamp - EPOCH) // _ONE_US,
        ev.backend,
        ev.provider,
        ev.model,
        ev.request_model,
        ev.input_tokens,
        ev.cached_input_tokens,
        ev.cache_write_tokens,
        ev.output_tokens,
        ev.reasoning_tokens,
        nano,
        ev.price_status,
        ev.agent,
        ev.session,
        ev.user,
        ev.team,
        ev.task_id,
        ev.task_type,
        ev.tier,
        _tags_json(ev.tags) if ev.tags else "{}",
        ev.status,
        ev.http_status,
        1 if ev.streamed else 0,
        ev.duration_ms,
        ev.ttft_ms,
        ev.source,
        ev.key,
        ev.cache_write_1h_tokens,
        ev.service_tier,
        _tags_json(ev.units) if ev.units else "{}",
        ev.reason,
    )


def _tags_json(tags: dict[str, str] | dict[str, int]) -> str:
    return json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_to_event(r: Sequence[Any]) -> UsageEvent:
    """A row in EVENT_COLUMNS order back to a UsageEvent."""
    return UsageEvent(
        id=r[0],
        timestamp=from_us(int(r[1])),
        backend=r[2],
        provider=r[3],
        model=r[4],
        request_model=r[5],
        input_tokens=int(r[6]),
        cached_input_tokens=int(r[7]),
        cache_write_tokens=int(r[8]),
        output_tokens=int(r[9]),
        reasoning_tokens=int(r[10]),
        cost_usd=None if r[11] is None else from_nano(int(r[11])),
        price_status=r[12],
        agent=r[13],
        session=r[14],
        user=r[15],
        team=r[16],
        task_id=r[17],
        task_type=r[18],
        tier=r[19],
        tags=json.loads(r[20]) if r[20] else {},
        status=r[21],
        http_status=r[22],
        streamed=bool(r[23]),
        duration_ms=r[24],
        ttft_ms=r[25],
        source=r[26],
        key=r[27],
        cache_write_1h_tokens=int(r[28]),
        service_tier=r[29],
        units=json.loads(r[30]) if r[30] and r[30] != "{}" else {},
        reason=r[31],
    )


def check_filter(name: str) -> str:
    """A report filter's field name (`-` spelt `_`), refused unless it is one of `FILTER_FIELDS`."""
    name = name.replace("-", "_")
    if name not in FILTER_FIELDS:
        raise ValidationError(name, f"cannot filter on {name!r}; one of {', '.join(FILTER_FIELDS)}")
    return name


def time_range(since: datetime | None, until: datetime | None) -> tuple[list[str], list[object]]:
    """SQL conditions and parameters for `since <= ts < until` on a `ts_us` column (either end open)."""
    conds: list[str] = []
    params: list[object] = []
    if since is not None:
        conds.append("ts_us >= ?")
        params.append(to_us(since))
    if until is not None:
        conds.append("ts_us < ?")
        params.append(to_us(until))
    return conds, params
