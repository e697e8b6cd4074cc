"""Budget counters in PostgreSQL: server-side functions that row-lock counters in key order."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ...errors import StorageError
from ...store.dialect import Param
from ...store.migrations import apply_migrations
from ..seed import SeedSpec
from .base import Charge, Refusal, _all_keys, _guard, _guard_all, _items, _merge, _refusal_at
from .sql import SQLConn, SQLCounters

log = logging.getLogger("llmbudget.budget")


@_guard_all
class PostgresCounters(SQLCounters):
    """Counters in PostgreSQL: a reservation is one call of a server-side function that row-locks in key order."""

    dialect = "postgres"
    _GREATEST = "GREATEST"
    _FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as e:  # pragma: no cover - extra not installed
            raise StorageError("PostgreSQL budgets need `pip install 'llmbudget[postgres]'`") from e
        self.url = url
        self._driver_errors: tuple[type[BaseException], ...] = (
            psycopg.OperationalError,
            psycopg_pool.PoolTimeout,
        )
        # autocommit: the hot path is one statement (a function call), its own transaction;
        # multi-statement work opens `conn.transaction()` explicitly
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, timeout=30, kwargs={"autocommit": True}
        )
        self._init_owner()
        self._init_sql()
        self._create_schema()
        self._sweep_lock = threading.Lock()
        self._vacuum_warned = False
        self.reap()  # a predecessor killed on this storage leaves nothing reserved

    @_guard
    def _create_schema(self) -> None:
        """The tables and functions come from the ledger's migrations (already applied when the ledger opened)."""
        try:
            apply_migrations(self._write, "postgres")
        except BaseException:
            self._pool.close()
            raise

    # ------------------------------------------------------------------ the dialect
    @contextmanager
    def _write(self) -> Iterator[SQLConn]:
        with self._pool.connection() as conn, conn.transaction():
            yield SQLConn(conn, postgres=True)

    @contextmanager
    def _read(self) -> Iterator[SQLConn]:
        with self._pool.connection() as conn:
            yield SQLConn(conn, postgres=True)

    def _write_one(self) -> AbstractContextManager[SQLConn]:
        return self._read()  # autocommit: the statement is its own transaction

    def _vacuum_pending(self) -> None:
        # budget_pending is a queue (a row lives from a settlement to the next reconciliation, seconds):
        # without a vacuum its dead rows pile up, and every reconciliation's scan of a busy counter walks
        # them all; autovacuum may be off, or slow to come back to a table this small. SKIP_LOCKED: a
        # replica vacuuming it now is enough
        try:
            with self._read() as db:
                db.execute("VACUUM (SKIP_LOCKED) budget_pending")
        except Exception as e:  # not the table's owner, say: the reconciliation itself is done
            if not self._vacuum_warned:
                self._vacuum_warned = True
                log.warning("budget vacuum_failed table=budget_pending error=%s: %s", type(e).__name__, e)

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list[Param]]:
        return f"{column} = ANY(?)", [list(values)]

    def _prefix(self, column: str, prefix: str) -> tuple[str, list[Param]]:
        return f"left({column}, ?) = ?", [len(prefix), prefix]

    def _owned(self, owner: str) -> tuple[str, list[Param]]:
        return "left(id, ?) = ?", [len(owner) + 1, owner + "/"]

    def _pop_reservations(self, db: SQLConn, where: str, params: Sequence[Param]) -> list[str]:
        return [
            r[0] for r in db.execute(f"DELETE FROM budget_reservations WHERE {where} RETURNING items", params)
        ]

    def _create_counters(self, db: SQLConn, keys: Sequence[str]) -> None:
        db.execute(
            "INSERT INTO budget_counters (counter) SELECT k FROM unnest(?::text[]) AS k ORDER BY 1 "
            "ON CONFLICT DO NOTHING",
            (list(keys),),
        )

    def _lock_counters(self, db: SQLConn, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        rows = db.execute(
            "SELECT counter, spent, reserved FROM budget_counters WHERE counter = ANY(?) ORDER BY counter FOR UPDATE",
            (list(keys),),
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def _bump(self, db: SQLConn, key: str, spent: int, reserved: int, now: float) -> None:
        db.execute(
            "UPDATE budget_counters SET spent = spent + ?, reserved = GREATEST(0, reserved + ?), "
            "updated_at = ? WHERE counter = ?",
            (spent, reserved, now, key),
        )

    def _reconcile_row(self, db: SQLConn, key: str, now: float) -> tuple[Any, ...] | None:
        db.execute(
            "INSERT INTO budget_counters (counter, updated_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (key, now),
        )
        rows = db.execute("SELECT spent FROM budget_counters WHERE counter = ? FOR UPDATE", (key,))
        return rows[0] if rows else None

    @contextmanager
    def _step(self, seeds: Mapping[str, SeedSpec]) -> Iterator[tuple[SQLConn, float]]:
        if seeds:
            self.ensure(seeds)
        now = time.time()
        with self._write() as db:
            yield db, now

    # ------------------------------------------------------------------ reserve and settle in the server
    def reserve(
        self, rid: str, charges: Sequence[Charge], ttl_s: float, seeds: Mapping[str, SeedSpec] | None = None
    ) -> Refusal | None:
        self._hold_lease()
        now = time.time()
        if now >= self._next_sweep and self._sweep_lock.acquire(blocking=False):
            try:
                self._next_sweep = now + 30
                self.sweep(now)
            finally:
                self._sweep_lock.release()
        if seeds:
            self.ensure(seeds)
        items = _items(charges)
        spec = json.dumps(
            [
                {"r": list(c.read_keys), "l": -1 if c.limit is None else c.limit, "a": c.amount}
                for c in charges
            ]
        )
        with self._read() as db:
            row = db.execute(
                "SELECT llmb_budget_reserve_v2(?, ?, ?, ?, ?, ?::jsonb, ?, ?)",
                (
                    rid,
                    _all_keys(charges),
                    [k for k, _ in items],
                    [int(v) for _, v in items],
                    json.dumps(items),
                    spec,
                    now,
                    ttl_s,
                ),
            )[0]
        return _refusal_at(charges, row[0])

    def settle(
        self,
        rid: str,
        actual: Sequence[tuple[str, int]],
        event_id: str | None = None,
        ledgered: Sequence[tuple[str, int]] | None = None,
    ) -> bool:
        merged = _merge(actual)
        keys = sorted(merged)
        shown = dict(ledgered) if ledgered is not None else merged
        with self._read() as db:
            rows = db.execute(
                "SELECT llmb_budget_settle_v2(?, ?, ?, ?, ?, ?)",
                (
                    rid,
                    keys,
                    [merged[k] for k in keys],
                    time.time(),
                    event_id,
                    [min(merged[k], int(shown.get(k, merged[k]))) for k in keys],
                ),
            )
        return bool(rows and rows[0][0])

    def release(self, rid: str) -> None:
        self.settle(rid, [])

    def close(self) -> None:
        self._stop_lease()
        self._pool.close()
