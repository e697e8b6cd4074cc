"""Budget counters in PostgreSQL: server-side functions that row-lock counters in key order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import StorageError
from ..seed import SeedSpec, counter_sums_sql, has_ledger_tables, seed_sql, values_sql
from .base import (
    _PRUNE_OLD_SQL,
    _PRUNE_PENDING_SQL,
    KEEP_S,
    Charge,
    CounterStore,
    LeaseResult,
    Reconciled,
    Refusal,
    Spend,
    _all_keys,
    _check,
    _count_calls,
    _guard,
    _guard_all,
    _items,
    _lease_items,
    _lease_keys,
    _lease_plan,
    _merge,
    _pending_rows,
)

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
class PostgresCounters(CounterStore):
    """Counters in PostgreSQL: a reservation is one call of a server-side function that row-locks in key order."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as e:  # pragma: no cover - extra not installed
            raise StorageError("PostgreSQL budgets need `pip install 'llmbudget[postgres]'`") from e
        self.url = url
        import psycopg
        import psycopg_pool

        self._driver_errors: tuple[type[BaseException], ...] = (
            psycopg.OperationalError,
            psycopg_pool.PoolTimeout,
        )
        # autocommit: the hot path is one statement (a function call), its own transaction;
        # multi-statement work opens `conn.transaction()` explicitly
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, timeout=30, kwargs={"autocommit": True}
        )
        self._init_owner()
        self._create_schema()
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        self._ledger_known = False
        self._next_prune = 0.0
        self.reap()  # a predecessor killed on this storage leaves nothing reserved

    def _beat(self, now: float) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO budget_owners(owner, host, pid, started, heartbeat) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT(owner) DO UPDATE SET heartbeat = excluded.heartbeat",
                (self.owner, self.host, self.pid, self.started, now),
            )

    def _owners(self) -> list[tuple[str, str, int, str, float]]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT owner, host, pid, started, heartbeat FROM budget_owners").fetchall()
        return [(str(o), str(h), int(p), str(st), float(b)) for o, h, p, st, b in rows]

    def _release_owner(self, owner: str) -> int:
        now = time.time()
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "DELETE FROM budget_reservations WHERE left(id, %s) = %s RETURNING items",
                (len(owner) + 1, owner + "/"),
            ).fetchall()
            merged: dict[str, int] = {}
            for (items,) in rows:
                for key, amount, *_ in json.loads(items):
                    merged[key] = merged.get(key, 0) + int(amount)
            for key in sorted(merged):  # key order, as reservations lock them: no deadlock
                self._add(conn, key, 0, -merged[key], now)
            conn.execute("DELETE FROM budget_owners WHERE owner = %s", (owner,))
        return len(rows)

    @_guard
    def _create_schema(self) -> None:
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_DDL_LOCK,))
                for stmt in _PG_SCHEMA:
                    conn.execute(stmt)
                for name, body in _PG_FUNCTIONS.items():
                    if conn.execute("SELECT to_regproc(%s)", (name,)).fetchone()[0] is None:  # type: ignore[index]
                        conn.execute(body)
        except BaseException:
            self._pool.close()
            raise

    @staticmethod
    def _add(conn: Any, key: str, spent: int, reserved: int, now: float) -> None:
        conn.execute(
            "INSERT INTO budget_counters(counter, spent, reserved, updated_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT(counter) DO UPDATE SET spent = budget_counters.spent + excluded.spent, "
            "reserved = GREATEST(0, budget_counters.reserved + excluded.reserved), updated_at = excluded.updated_at",
            (key, spent, reserved, now),
        )

    def _has_ledger(self, conn: Any) -> bool:
        if not self._ledger_known:
            self._ledger_known = has_ledger_tables(
                lambda sql, params: conn.execute(sql, params).fetchall(), postgres=True
            )
        return self._ledger_known

    def ensure(self, seeds: Mapping[str, SeedSpec]) -> None:
        with self._known_lock:
            fresh = [k for k in sorted(seeds) if k not in self._known]
        if not fresh:
            return
        now = time.time()
        with self._pool.connection() as conn, conn.transaction():
            ledger = self._has_ledger(conn)
            for key in fresh:
                expr, params = seed_sql(seeds[key]) if ledger else ("0", [])
                # one statement: the seed is read and the row created together; a concurrent creator
                # wins the conflict and this one does nothing (never seeded twice)
                conn.execute(
                    f"INSERT INTO budget_counters(counter, spent, reserved, updated_at) SELECT %s, {expr.replace('?', '%s')}, 0, %s "
                    "WHERE NOT EXISTS (SELECT 1 FROM budget_counters WHERE counter = %s) ON CONFLICT DO NOTHING",
                    [key, *params, now, key],
                )
        with self._known_lock:
            if len(self._known) > 100_000:
                self._known.clear()
            self._known.update(fresh)

    def ledger_values(self, column: str, start_us: int, end_us: int) -> list[str]:
        with self._pool.connection() as conn:
            if not self._has_ledger(conn):
                return []
            sql, params = values_sql(column, start_us, end_us)
            return [str(r[0]) for r in conn.execute(sql.replace("?", "%s"), params).fetchall()]

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
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT llmb_budget_reserve_v2(%s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
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
            ).fetchone()
        idx, spent, reserved = (int(x) for x in row[0])  # type: ignore[index]
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
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT llmb_budget_settle_v2(%s, %s, %s, %s, %s, %s)",
                (
                    rid,
                    keys,
                    [merged[k] for k in keys],
                    time.time(),
                    event_id,
                    [min(merged[k], int(shown.get(k, merged[k]))) for k in keys],
                ),
            ).fetchone()
        return bool(row and row[0])

    def release(self, rid: str) -> None:
        self.settle(rid, [])

    def lease(
        self,
        rid: str,
        spends: Sequence[Spend] = (),
        grow: Sequence[Charge] = (),
        give_back: Mapping[str, int] | None = None,
        calls: Mapping[str, int] | None = None,
        ttl_s: float = 3600,
        seeds: Mapping[str, SeedSpec] | None = None,
    ) -> LeaseResult:
        self._hold_lease()
        if seeds:
            self.ensure(seeds)
        now = time.time()
        keys = _lease_keys(spends, grow, give_back)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO budget_counters(counter) SELECT k FROM unnest(%s::text[]) AS k ORDER BY 1 "
                "ON CONFLICT DO NOTHING",
                (keys,),
            )
            # the lease row first, then the counters in key order (as reservations lock them: no deadlock)
            row = conn.execute(
                "SELECT items FROM budget_reservations WHERE id = %s FOR UPDATE", (rid,)
            ).fetchone()
            rows = conn.execute(
                "SELECT counter, spent, reserved FROM budget_counters WHERE counter = ANY(%s) ORDER BY counter FOR UPDATE",
                (keys,),
            ).fetchall()
            used = {r[0]: (int(r[1]), int(r[2])) for r in rows}
            held = {k: [int(a), int(n[0]) if n else 0] for k, a, *n in json.loads(row[0])} if row else {}
            d_spent, d_res = _lease_plan(held, spends, give_back)
            for key in set(d_spent) | set(d_res):
                sp, rs = used.get(key, (0, 0))
                used[key] = (sp + d_spent.get(key, 0), max(0, rs + d_res.get(key, 0)))
            refusal = _check(grow, used) if grow else None
            if grow and refusal is None:
                for key, amount in _items(grow):
                    sp, rs = used.get(key, (0, 0))
                    used[key] = (sp, rs + amount)
                    d_res[key] = d_res.get(key, 0) + amount
                    held.setdefault(key, [0, 0])[0] += amount
            for key in sorted(set(d_spent) | set(d_res)):
                conn.execute(
                    "UPDATE budget_counters SET spent = spent + %s, reserved = GREATEST(0, reserved + %s), "
                    "updated_at = %s WHERE counter = %s",
                    (d_spent.get(key, 0), d_res.get(key, 0), now, key),
                )
            pend = sorted(_pending_rows(spends).items())
            if pend:
                conn.cursor().executemany(
                    "INSERT INTO budget_pending AS b (event_id, counter, amount, kept, settled_at) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id, counter) DO UPDATE SET "
                    "amount = b.amount + excluded.amount, kept = b.kept + excluded.kept, settled_at = excluded.settled_at",
                    [(e, k, a, kept, now) for (e, k), (a, kept) in pend],
                )
            items = _lease_items(held, calls)
            if items:
                conn.execute(
                    "INSERT INTO budget_reservations(id, items, expires_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT(id) DO UPDATE SET items = excluded.items, expires_at = excluded.expires_at",
                    (rid, json.dumps(items), now + ttl_s),
                )
            elif row is not None:
                conn.execute("DELETE FROM budget_reservations WHERE id = %s", (rid,))
            ids = sorted({sp.event_id for sp in spends if sp.event_id})
            ledgered = False
            if ids and self._has_ledger(conn):
                ledgered = bool(
                    conn.execute("SELECT 1 FROM events WHERE id = ANY(%s) LIMIT 1", (ids,)).fetchone()
                )
        return LeaseResult(refusal, {k: v[0] for k, v in held.items()}, used, ledgered)

    def inflight(self, keys: Sequence[str]) -> int:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT items FROM budget_reservations").fetchall()
        return _count_calls([r[0] for r in rows], keys)

    def reconcile(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        out: dict[str, Reconciled] = {}
        for key in sorted(seeds):
            now = time.time()
            with self._pool.connection() as conn, conn.transaction():
                ledger = self._has_ledger(conn)
                conn.execute(
                    "INSERT INTO budget_counters(counter, updated_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (key, now),
                )
                # the row lock first; the reads below then see every settlement committed before it
                row = conn.execute(
                    "SELECT spent FROM budget_counters WHERE counter = %s FOR UPDATE", (key,)
                ).fetchone()
                # ledger and pending parts in one statement: one snapshot, an event counts once
                sql, params = counter_sums_sql(seeds[key], key, ledger)
                spent, un, kept = (int(x) for x in conn.execute(sql.replace("?", "%s"), params).fetchone())  # type: ignore[union-attr]
                after = spent + un + kept
                conn.execute("UPDATE budget_counters SET spent = %s WHERE counter = %s", (after, key))
                if ledger:
                    conn.execute(
                        "UPDATE budget_pending SET amount = 0 WHERE counter = %s AND amount <> 0 "
                        "AND event_id IN (SELECT id FROM events)",
                        (key,),
                    )
                    conn.execute(
                        "DELETE FROM budget_pending WHERE counter = %s AND (amount = 0 AND (kept = 0 OR "
                        "event_id IN (SELECT id FROM events WHERE cost_nano IS NOT NULL)) OR settled_at < %s)",
                        (key, now - KEEP_S),
                    )
                out[key] = Reconciled(int(row[0]) if row else after, after, spent, un, kept)
        now = time.time()
        if now >= self._next_prune:
            self._next_prune = now + 60
            with self._pool.connection() as conn:
                sql = _PRUNE_PENDING_SQL if self._has_ledger(conn) else _PRUNE_OLD_SQL
                conn.execute(sql.replace("?", "%s"), (now - KEEP_S,))
        return out

    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT counter, spent, reserved FROM budget_counters WHERE counter = ANY(%s)", (list(keys),)
            ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT counter, spent, reserved FROM budget_counters WHERE left(counter, %s) = %s",
                (len(prefix), prefix),
            ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def claim_once(self, key: str) -> bool:
        with self._pool.connection() as conn:
            cur = conn.execute(
                "INSERT INTO budget_claims(key, claimed_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (key, time.time()),
            )
            return cur.rowcount == 1

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "DELETE FROM budget_reservations WHERE expires_at < %s RETURNING items", (now,)
            ).fetchall()
            merged: dict[str, int] = {}
            for (items,) in rows:
                for key, amount, *_ in json.loads(items):
                    merged[key] = merged.get(key, 0) + int(amount)
            for key in sorted(merged):
                self._add(conn, key, 0, -merged[key], now)
        return len(rows)

    def close(self) -> None:
        self._stop_lease()
        self._pool.close()
