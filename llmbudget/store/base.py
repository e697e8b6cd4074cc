"""The ledger interface: SQLite (default) and PostgreSQL implement the same contract.

Writes are buffered and flushed in batches by a background thread, off any request's
critical path; `record()` never blocks on the database. Reports read the hourly and
daily rollups that writes keep current, never a month of raw events.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from .. import attribution_table
from ..events import SOURCES, UsageEvent
from ..money import decimal_str, from_nano

#: report dimensions accepted by `costs(by=...)` (CLI spelling `task-type` maps to `task_type`):
#: the attribution fields with a `--by` choice (`attribution_table`), then the call's own
DIMENSIONS = (
    *attribution_table.BY_CHOICES.values(),
    "model",
    "backend",
    "provider",
    "price_status",
    "status",
)
#: time buckets accepted by `costs(by=...)`, in the configured timezone
TIME_BUCKETS = ("hour", "day", "week", "month")
#: fields `query()` and the reports can filter on (exact match)
FILTER_FIELDS = (
    "backend",
    "provider",
    "model",
    *attribution_table.FILTER_FIELDS,
    "status",
    "price_status",
    "source",
)


@dataclass(slots=True)
class CostRow:
    """One line of a cost report: a group key and its exact totals."""

    key: str | None
    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nano: int = 0
    #: calls whose model had no price: their cost is unknown, not zero
    unpriced_calls: int = 0

    @property
    def cost_usd(self) -> Decimal:
        return from_nano(self.cost_nano)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": decimal_str(self.cost_usd),
            "cost_nano": self.cost_nano,
            "unpriced_calls": self.unpriced_calls,
        }


@dataclass(slots=True)
class SessionRow:
    session: str
    start: datetime
    end: datetime
    calls: int
    input_tokens: int
    output_tokens: int
    cost_nano: int
    unpriced_calls: int
    agents: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tokens": self.tokens,
            "cost_usd": decimal_str(from_nano(self.cost_nano)),
            "cost_nano": self.cost_nano,
            "unpriced_calls": self.unpriced_calls,
            "agents": list(self.agents),
        }


@dataclass(slots=True)
class UnpricedModel:
    provider: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    first_seen: datetime
    last_seen: datetime


class Ledger(ABC):
    """The durable record of every LLM call. Open with `Ledger.open(url)`."""

    url: str

    @staticmethod
    def open(url: str | None = None, **options: Any) -> Ledger:
        """Open (and migrate) the ledger at `url`: `sqlite:///path`, a plain path, or `postgresql://...`."""
        from . import open_ledger  # Ledger.open: the package imports this base class first

        return open_ledger(url, **options)

    # ------------------------------------------------------------------ writes
    @abstractmethod
    def record(self, event: UsageEvent) -> None:
        """Accept an event: buffered, written in the next batch, appended to the audit log. Never blocks on I/O."""

    def record_batch(self, events: list[UsageEvent]) -> None:
        """`record()` for events accepted together: their audit lines in one write where the
        ledger has an audit log."""
        for event in events:
            self.record(event)

    @abstractmethod
    def record_many(self, events: Iterable[UsageEvent]) -> int:
        """Write events now (synchronously, in batches); returns how many were new (idempotent on `id`)."""

    @abstractmethod
    def flush(self) -> None:
        """Block until every event accepted so far is durable in the database."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release connections. Safe to call twice."""

    @abstractmethod
    def update_costs(self, changes: Sequence[tuple[str, int | None, str]]) -> int:
        """Re-price events: (id, cost_nano or None, price_status); rollups are adjusted. Returns rows changed."""

    # ------------------------------------------------------------------ reads
    def recorded_elsewhere(self, since: datetime, limit: int = 5000) -> list[UsageEvent]:
        """Events at or after `since` that did not come through a proxy (imports, `wrap()`), newest
        first (a running server's live pages show them)."""
        found: list[UsageEvent] = []
        for source in sorted(SOURCES - {"proxy"}):
            found += self.query(since=since, filters={"source": source}, limit=limit)
        return sorted(found, key=lambda e: (e.timestamp, e.id), reverse=True)[:limit]

    @abstractmethod
    def get(self, event_id: str) -> UsageEvent | None:
        """One event by id."""

    @abstractmethod
    def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> list[UsageEvent]:
        """Raw events in [since, until), exact-match filters on FILTER_FIELDS."""

    @abstractmethod
    def iter_events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
        batch: int = 5000,
    ) -> Iterable[UsageEvent]:
        """Stream events oldest first without loading them all (exports, reprice)."""

    @abstractmethod
    def count(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
    ) -> int:
        """Number of events matching, for progress bars."""

    @abstractmethod
    def costs(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        by: str | None = None,
        tz: ZoneInfo | None = None,
        filters: dict[str, str] | None = None,
    ) -> list[CostRow]:
        """Totals from the rollups, grouped by a DIMENSION or TIME_BUCKET (None: one total row, key None).

        Time buckets are computed in `tz`; keys are `YYYY-MM-DD` (day), `YYYY-Www` (ISO week),
        `YYYY-MM` (month), `YYYY-MM-DDTHH` (hour). Rows are sorted by cost descending for
        dimensions and by key for time buckets.
        """

    @abstractmethod
    def sessions(self, *, limit: int = 30, since: datetime | None = None) -> list[SessionRow]:
        """The most recent sessions (by last activity), newest first."""

    @abstractmethod
    def unpriced_models(self) -> list[UnpricedModel]:
        """Models with events still `unpriced`, most calls first."""

    # ------------------------------------------------------------------ quota readings
    @abstractmethod
    def record_reading(self, reading: Mapping[str, Any]) -> None:
        """Store a quota reading (a JSON-ready dict with at least `timestamp`, `backend`, `source`)."""

    @abstractmethod
    def readings(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        backend: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored quota readings, oldest first."""

    @abstractmethod
    def latest_readings(self) -> dict[str, dict[str, Any]]:
        """The newest reading per backend/account."""

    @abstractmethod
    def prune_readings(self, before: datetime, *, dry_run: bool = False) -> int:
        """Delete readings older than `before`; returns how many (would be) removed."""

    # ------------------------------------------------------------------ key/value state (pauses, fired alerts)
    @abstractmethod
    def get_state(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Small durable state (agent pauses, alerts already fired), JSON values."""

    @abstractmethod
    def set_state(self, namespace: str, key: str, value: dict[str, Any] | None) -> None:
        """Set (or delete with None) a state value."""

    @abstractmethod
    def list_state(self, namespace: str) -> dict[str, dict[str, Any]]:
        """Every state value in a namespace."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
