"""Budget counters in PostgreSQL: server-side functions that row-lock counters in key order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ...errors import StorageError
from ..seed import SeedSpec
from .base import Charge, Refusal, _all_keys, _guard, _guard_all, _items, _merge
from .sql import SQLConn, SQLCounters

_PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS budget_counters (
      counter TEXT PRIMARY KEY, spent BIGINT NOT NULL DEFAULT 0, reserved BIGINT NOT NULL DEFAULT 0,
      updated_at DOUBLE PRECISION NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS budget_reservations (
      id TEXT PRIMARY KEY, items TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS budget_reservations_expiry ON budget_reservations(expires_at)",
    "CREATE TABLE IF NOT EXISTS budget_claims (key TEXT PRIMARY KEY, claimed_at DOUBLE PRECISION NOT NULL)",
    """CREATE TABLE IF NOT EXISTS budget_pending (
      event_id TEXT NOT NULL, counter TEXT NOT NULL, amount BIGINT NOT NULL, kept BIGINT NOT NULL DEFAULT 0,
      settled_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (event_id, counter))""",
    "CREATE INDEX IF NOT EXISTS budget_pending_counter ON budget_pending (counter)",
    """CREATE TABLE IF NOT EXISTS budget_owners (
      owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid BIGINT NOT NULL, started TEXT NOT NULL DEFAULT '',
      heartbeat DOUBLE PRECISION NOT NULL)""",
]
# One round trip per reservation and per settlement: the check-and-book runs inside the server as
# one function call (autocommit: the call is its own transaction). Versioned names: a changed body
# gets a new name, so processes of two versions can share a database.
_PG_FUNCTIONS = {
    "llmb_budget_reserve_v2": """
CREATE OR REPLACE FUNCTION llmb_budget_reserve_v2(p_rid text, p_keys text[], p_items text[], p_amounts bigint[],
    p_items_json text, p_charges jsonb, p_now double precision, p_ttl double precision) RETURNS bigint[]
LANGUAGE plpgsql AS $fn$
DECLARE
  c jsonb;
  i integer := 0;
  s bigint;
  r bigint;
BEGIN
  -- A reservation need not survive a server crash: if lost, the settlement simply adds the real
  -- spend. Not waiting for its WAL flush halves a call's disk waits; settlements stay durable.
  PERFORM set_config('synchronous_commit', 'off', true);
  -- every counter written must exist to be row-locked; sorted, so two calls never deadlock
  INSERT INTO budget_counters(counter) SELECT k FROM unnest(p_items) AS k ORDER BY 1 ON CONFLICT DO NOTHING;
  PERFORM 1 FROM budget_counters WHERE counter = ANY(p_keys) ORDER BY counter FOR UPDATE;
  FOR c IN SELECT value FROM jsonb_array_elements(p_charges) LOOP
    i := i + 1;
    IF (c->>'l')::bigint >= 0 THEN
      SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(reserved), 0) INTO s, r FROM budget_counters
        WHERE counter IN (SELECT jsonb_array_elements_text(c->'r'));
      IF s + r + (c->>'a')::bigint > (c->>'l')::bigint THEN
        RETURN ARRAY[i, s, r]::bigint[];
      END IF;
    END IF;
  END LOOP;
  UPDATE budget_counters AS b SET reserved = b.reserved + x.a, updated_at = p_now
    FROM unnest(p_items, p_amounts) AS x(k, a) WHERE b.counter = x.k;
  INSERT INTO budget_reservations(id, items, expires_at) VALUES (p_rid, p_items_json, p_now + p_ttl);
  RETURN ARRAY[0, 0, 0]::bigint[];
END
$fn$""",
    "llmb_budget_settle_v1": """
CREATE OR REPLACE FUNCTION llmb_budget_settle_v1(p_rid text, p_keys text[], p_amounts bigint[],
    p_now double precision) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
  v_items text;
BEGIN
  DELETE FROM budget_reservations WHERE id = p_rid RETURNING items INTO v_items;
  -- the reservation released and the real spend added in one upsert per counter, in key order
  INSERT INTO budget_counters AS b (counter, spent, reserved, updated_at)
    SELECT k, SUM(sp), SUM(rs), p_now FROM (
      SELECT x->>0 AS k, 0::bigint AS sp, -((x->>1)::bigint) AS rs
        FROM jsonb_array_elements(COALESCE(v_items, '[]')::jsonb) AS x
      UNION ALL
      SELECT u.k, u.a, 0 FROM unnest(p_keys, p_amounts) AS u(k, a)
    ) AS parts GROUP BY k ORDER BY k
  ON CONFLICT (counter) DO UPDATE SET spent = b.spent + excluded.spent,
    reserved = GREATEST(0, b.reserved + excluded.reserved), updated_at = excluded.updated_at;
  RETURN CASE WHEN v_items IS NULL THEN 0 ELSE 1 END;
END
$fn$""",
    # v1 plus the pending rows of the event (amount the ledger will show, amount kept beside it);
    # returns 1 when the ledger already holds the event (the caller reconciles those counters)
    "llmb_budget_settle_v2": """
CREATE OR REPLACE FUNCTION llmb_budget_settle_v2(p_rid text, p_keys text[], p_amounts bigint[],
    p_now double precision, p_event text, p_shown bigint[]) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
  found_event boolean := false;
BEGIN
  PERFORM llmb_budget_settle_v1(p_rid, p_keys, p_amounts, p_now);
  IF p_event IS NULL THEN
    RETURN 0;
  END IF;
  INSERT INTO budget_pending AS b (event_id, counter, amount, kept, settled_at)
    SELECT p_event, u.k, u.s, u.a - u.s, p_now FROM unnest(p_keys, p_amounts, p_shown) AS u(k, a, s) ORDER BY 2
  ON CONFLICT (event_id, counter) DO UPDATE SET amount = b.amount + excluded.amount,
    kept = b.kept + excluded.kept, settled_at = excluded.settled_at;
  IF to_regclass('events') IS NOT NULL THEN
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)' INTO found_event USING p_event;
  END IF;
  RETURN CASE WHEN found_event THEN 1 ELSE 0 END;
END
$fn$""",
}
#: advisory lock id serializing the CREATE TABLEs of concurrent first starts
_PG_DDL_LOCK = 0x6C6D6231


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
        self.reap()  # a predecessor killed on this storage leaves nothing reserved

    @_guard
    def _create_schema(self) -> None:
        try:
            with self._write() as db:
                db.execute("SELECT pg_advisory_xact_lock(?)", (_PG_DDL_LOCK,))
                for stmt in _PG_SCHEMA:
                    db.execute(stmt)
                for name, body in _PG_FUNCTIONS.items():
                    if db.execute("SELECT to_regproc(?)", (name,))[0][0] is None:
                        db.execute(body)
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

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _prefix(self, column: str, prefix: str) -> tuple[str, list[Any]]:
        return f"left({column}, ?) = ?", [len(prefix), prefix]

    def _owned(self, owner: str) -> tuple[str, list[Any]]:
        return "left(id, ?) = ?", [len(owner) + 1, owner + "/"]

    def _pop_reservations(self, db: SQLConn, where: str, params: Sequence[Any]) -> list[str]:
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
        idx, spent, reserved = (int(x) for x in row[0])
        if idx == 0:
            return None
        c = charges[idx - 1]
        return Refusal(c.budget, spent, reserved, int(c.limit or 0), c.amount)

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
