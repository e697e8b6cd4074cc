"""Budget counters and reservations, atomic across threads and processes.

`base` holds the contract (`CounterStore`), the values it passes (`Charge`, `Refusal`, `Spend`,
`LeaseResult`, `Reconciled`) and the owner heartbeats every back-end shares; `sqlite`, `postgres`
and `redis` hold what each storage does differently. `open_counters` picks one from the URLs.
"""

from __future__ import annotations

from pathlib import Path

from ..seed import LedgerSeeder
from .base import (
    BEAT_S,
    KEEP_S,
    OWNER_STALE_S,
    Charge,
    CounterStore,
    LeaseResult,
    Reconciled,
    Refusal,
    Spend,
    owner_of,
)
from .postgres import PostgresCounters
from .redis import RedisCounters
from .sqlite import SQLiteCounters

__all__ = [
    "BEAT_S",
    "KEEP_S",
    "OWNER_STALE_S",
    "Charge",
    "CounterStore",
    "LeaseResult",
    "PostgresCounters",
    "Reconciled",
    "RedisCounters",
    "Refusal",
    "SQLiteCounters",
    "Spend",
    "open_counters",
    "owner_of",
]


def open_counters(
    db_url: str, redis_url: str | None = None, *, redis_prefix: str = "llmb:budget:", pool_size: int = 4
) -> CounterStore:
    """Counters in Redis when `redis_url` is set (seeded from the ledger at `db_url`), else in the ledger's database."""
    if redis_url:
        return RedisCounters(redis_url, prefix=redis_prefix, seeder=LedgerSeeder(db_url))
    if db_url.startswith(("postgresql://", "postgres://")):
        return PostgresCounters(db_url, pool_size=pool_size)
    path = db_url[len("sqlite:///") :] if db_url.startswith("sqlite:///") else db_url
    if path.startswith("sqlite://"):
        path = path[len("sqlite://") :]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SQLiteCounters(path)
