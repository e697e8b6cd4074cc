"""What SQLite and PostgreSQL counters share: every statement written once, with `?` placeholders.

A back-end says how it holds its connection and its locks, and the few spellings that differ:

- `_write()`: a transaction that owns the write lock (SQLite: `BEGIN IMMEDIATE` on the one
  connection; PostgreSQL: a pooled connection in a transaction, rows locked as they are read);
- `_write_one()`: one writing statement (SQLite: the same transaction; PostgreSQL: autocommit);
- `_read()`: a connection for reads;
- `_GREATEST` (two-argument max), `_FOR_UPDATE` (the row-lock suffix of a read), `_in()` (a list
  parameter), `_prefix()` (keys starting with a prefix);
- `_pop_reservations()` (delete reservations and return their items), `_lock_counters()` and
  `_bump()` (the counters a lease step reads and writes), `_reconcile_row()` (a counter's spent
  before `reconcile`, its row created and locked).

`reserve` and `settle` stay in each back-end: SQLite runs them here in Python, PostgreSQL as one
call of a server-side function (one round trip on the hot path).
"""

from __future__ import annotations

import json
import threading
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ...store.dialect import Param, execute_in_chunks, multirow_statements, pg_sql
from ..seed import SeedSpec, counter_sums_sql, has_ledger_tables, seed_sql, values_sql
from .base import (
    _DONE,
    _PRUNE_OLD_SQL,
    _PRUNE_PENDING_SQL,
    KEEP_S,
    Charge,
    CounterStore,
    LeaseResult,
    Reconciled,
    Spend,
    _check,
    _checked,
    _count_calls,
    _items,
    _lease_items,
    _lease_keys,
    _lease_plan,
    _pending_rows,
)

#: a settlement's amounts waiting for its event to reach the ledger (added up per event and counter)
_PENDING_CONFLICT = (
    " ON CONFLICT (event_id, counter) DO UPDATE SET amount = b.amount + excluded.amount, "
    "kept = b.kept + excluded.kept, settled_at = excluded.settled_at"
)
#: the upsert for 256, 64, 16, 4 and 1 rows (SQLite writes a lease's batch with a few of them)
_PENDING_UPSERTS = multirow_statements(
    "INSERT INTO budget_pending AS b (event_id, counter, amount, kept, settled_at) VALUES ",
    "(?, ?, ?, ?, ?)",
    _PENDING_CONFLICT,
)
_PENDING_UPSERT = _PENDING_UPSERTS[1]


#: `_PENDING_UPSERT` for PostgreSQL in one statement: arrays of event ids, counters, amounts, kept
_PENDING_UPSERT_PG = (
    "INSERT INTO budget_pending AS b (event_id, counter, amount, kept, settled_at) "
    "SELECT u.e, u.k, u.a, u.kept, ? FROM unnest(?::text[], ?::text[], ?::bigint[], ?::bigint[]) "
    "AS u(e, k, a, kept) "
    "ON CONFLICT (event_id, counter) DO UPDATE SET amount = b.amount + excluded.amount, "
    "kept = b.kept + excluded.kept, settled_at = excluded.settled_at"
)


#: how often PostgreSQL's `budget_pending` is vacuumed (by the process reconciling when it is due)
VACUUM_S = 10.0


class SQLConn:
    """One connection during one step: `?` placeholders on both dialects, rows as lists of tuples."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres
        #: "sqlite" | "postgres" (the ledger's migrations ask)
        self.dialect = "postgres" if postgres else "sqlite"
        #: rows the last statement changed
        self.rowcount = 0

    def execute(self, sql: str, params: Sequence[Param] = ()) -> list[tuple[Any, ...]]:
        if self.postgres:
            cur = self.conn.execute(pg_sql(sql), params or None)
            self.rowcount = cur.rowcount
            return list(cur.fetchall()) if cur.description else []
        cur = self.conn.execute(sql, params)
        self.rowcount = cur.rowcount
        return list(cur.fetchall())

    def executemany(self, sql: str, rows: Sequence[Sequence[Param]]) -> None:
        if not rows:
            return
        if self.postgres:
            with self.conn.cursor() as cur:
                cur.executemany(pg_sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)


class SQLCounters(CounterStore):
    """Counters in the ledger's own database (tables `budget_*`), for SQLite and PostgreSQL."""

    #: "sqlite" | "postgres"
    dialect = ""
    _GREATEST = "MAX"
    _FOR_UPDATE = ""

    def _init_sql(self) -> None:
        self._next_sweep = 0.0
        self._next_prune = 0.0
        self._next_vacuum = time.time() + VACUUM_S
        #: counters known to exist (created and seeded): not checked again by this process
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        self._has_ledger = False

    # ------------------------------------------------------------------ what a back-end provides
    @abstractmethod
    def _write(self) -> AbstractContextManager[SQLConn]:
        """A transaction holding the write lock."""

    @abstractmethod
    def _write_one(self) -> AbstractContextManager[SQLConn]:
        """A connection for one writing statement (its own transaction)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[SQLConn]:
        """A connection for reads."""

    @abstractmethod
    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list[Param]]:
        """`column` is one of `values`: the condition and its parameters."""

    @abstractmethod
    def _prefix(self, column: str, prefix: str) -> tuple[str, list[Param]]:
        """`column` starts with `prefix`: the condition and its parameters."""

    @abstractmethod
    def _owned(self, owner: str) -> tuple[str, list[Param]]:
        """Reservation ids of `owner` ("owner/..."): the condition on `id` and its parameters."""

    @abstractmethod
    def _pop_reservations(self, db: SQLConn, where: str, params: Sequence[Param]) -> list[str]:
        """Delete the reservations matching `where`; their items (JSON) in any order."""

    def _create_counters(self, db: SQLConn, keys: Sequence[str]) -> None:
        """Make sure the counters `keys` exist before a lease step locks them (PostgreSQL row locks)."""

    @abstractmethod
    def _lock_counters(self, db: SQLConn, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(spent, reserved) of the counters among `keys`, locked until the transaction ends."""

    @abstractmethod
    def _bump(self, db: SQLConn, key: str, spent: int, reserved: int, now: float) -> None:
        """Add to a counter that `_lock_counters` read or created (reserved never below 0)."""

    @abstractmethod
    def _reconcile_row(self, db: SQLConn, key: str, now: float) -> tuple[Any, ...] | None:
        """The counter's (spent,) row as `reconcile` finds it; after the call the row exists and is locked."""

    # ------------------------------------------------------------------ shared steps
    def _add(self, db: SQLConn, key: str, spent: int, reserved: int, now: float) -> None:
        db.execute(
            "INSERT INTO budget_counters AS b (counter, spent, reserved, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (counter) DO UPDATE SET spent = b.spent + excluded.spent, "
            f"reserved = {self._GREATEST}(0, b.reserved + excluded.reserved), updated_at = excluded.updated_at",
            (key, spent, reserved, now),
        )

    def _unreserve(self, db: SQLConn, all_items: Sequence[str], now: float) -> None:
        """Take the amounts of released reservations out of their counters, in key order (no deadlock)."""
        merged: dict[str, int] = {}
        for items in all_items:
            for key, amount, *_ in json.loads(items):
                merged[key] = merged.get(key, 0) + int(amount)
        for key in sorted(merged):
            self._add(db, key, 0, -merged[key], now)

    def _ledger(self, db: SQLConn) -> bool:
        """The ledger's tables are in this database (asked until they are; a read error raises: fail closed)."""
        if not self._has_ledger:
            self._has_ledger = has_ledger_tables(db.execute, postgres=self.dialect == "postgres")
        return self._has_ledger

    def _unknown(self, seeds: Mapping[str, SeedSpec]) -> list[str]:
        with self._known_lock:
            return [k for k in sorted(seeds) if k not in self._known]

    def _remember(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with self._known_lock:
            if (
                len(self._known) > 100_000
            ):  # old windows' keys: forget them all, re-checked once if used again
                self._known.clear()
            self._known.update(keys)

    def _seed_in(self, db: SQLConn, keys: Sequence[str], seeds: Mapping[str, SeedSpec], now: float) -> None:
        """Create the counters `keys`, each seeded from the ledger in the statement that creates it."""
        if not keys:
            return
        ledger = self._ledger(db)
        for key in keys:
            expr, params = seed_sql(seeds[key]) if ledger else ("0", [])
            # the seed is read and the row created together; a concurrent creator wins the conflict
            # and this one does nothing (never seeded twice)
            db.execute(
                f"INSERT INTO budget_counters (counter, spent, reserved, updated_at) SELECT ?, {expr}, 0, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM budget_counters WHERE counter = ?) ON CONFLICT DO NOTHING",
                [key, *params, now, key],
            )

    def _sweep_in(self, db: SQLConn, now: float) -> int:
        items = self._pop_reservations(db, "expires_at < ?", [now])
        self._unreserve(db, items, now)
        return len(items)

    def _sweep_due(self, now: float) -> bool:
        """Whether the periodic sweep of expired reservations is due (then it is not due for 30 s)."""
        if now < self._next_sweep:
            return False
        self._next_sweep = now + 30
        return True

    # ------------------------------------------------------------------ owners
    def _beat(self, now: float) -> None:
        with self._write_one() as db:
            db.execute(
                "INSERT INTO budget_owners (owner, host, pid, started, heartbeat) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET heartbeat = excluded.heartbeat",
                (self.owner, self.host, self.pid, self.started, now),
            )

    def _owners(self) -> list[tuple[str, str, int, str, float]]:
        with self._read() as db:
            rows = db.execute("SELECT owner, host, pid, started, heartbeat FROM budget_owners")
        return [(str(o), str(h), int(p), str(st), float(b)) for o, h, p, st, b in rows]

    def _release_owner(self, owner: str) -> int:
        now = time.time()
        where, params = self._owned(owner)
        with self._write() as db:
            items = self._pop_reservations(db, where, params)
            self._unreserve(db, items, now)
            db.execute("DELETE FROM budget_owners WHERE owner = ?", (owner,))
        return len(items)

    # ------------------------------------------------------------------ the contract
    def ensure(self, seeds: Mapping[str, SeedSpec]) -> None:
        fresh = self._unknown(seeds)
        if not fresh:  # nothing to create: no write transaction
            return
        with self._write() as db:
            self._seed_in(db, fresh, seeds, time.time())
        self._remember(fresh)

    def ledger_values(self, column: str, start_us: int, end_us: int) -> list[str]:
        with self._read() as db:
            if not self._ledger(db):
                return []
            sql, params = values_sql(column, start_us, end_us)
            return [str(r[0]) for r in db.execute(sql, params)]

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
        with self._step(seeds or {}) as (db, now):
            return self._lease_in(db, now, rid, spends, grow, give_back, calls, ttl_s)

    @abstractmethod
    def _step(self, seeds: Mapping[str, SeedSpec]) -> AbstractContextManager[tuple[SQLConn, float]]:
        """The transaction of one reservation or lease step, the counters of `seeds` created first."""

    def _lease_in(
        self,
        db: SQLConn,
        now: float,
        rid: str,
        spends: Sequence[Spend],
        grow: Sequence[Charge],
        give_back: Mapping[str, int] | None,
        calls: Mapping[str, int] | None,
        ttl_s: float,
    ) -> LeaseResult:
        keys = _lease_keys(spends, grow, give_back)
        self._create_counters(db, keys)
        # the lease row first, then the counters in key order (as reservations lock them: no deadlock)
        row = db.execute(f"SELECT items FROM budget_reservations WHERE id = ?{self._FOR_UPDATE}", (rid,))
        used = self._lock_counters(db, keys)
        held = {k: [int(a), int(n[0]) if n else 0] for k, a, *n in json.loads(row[0][0])} if row else {}
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
            self._bump(db, key, d_spent.get(key, 0), d_res.get(key, 0), now)
        pending = sorted(_pending_rows(spends).items())
        if pending and db.postgres:
            # one statement for the whole batch (one row per event and counter, already summed):
            # psycopg's executemany sends a statement per row
            db.execute(
                _PENDING_UPSERT_PG,
                (
                    now,
                    [e for (e, _k), _v in pending],
                    [k for (_e, k), _v in pending],
                    [a for _ek, (a, _kept) in pending],
                    [kept for _ek, (_a, kept) in pending],
                ),
            )
        else:
            # a few multi-row statements (each (event, counter) once), not a GIL trade per row
            execute_in_chunks(
                db.execute, _PENDING_UPSERTS, [(e, k, a, kept, now) for (e, k), (a, kept) in pending]
            )
        items = _lease_items(held, calls)
        if items:
            db.execute(
                "INSERT INTO budget_reservations (id, items, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET items = excluded.items, expires_at = excluded.expires_at",
                (rid, json.dumps(items), now + ttl_s),
            )
        elif row:
            db.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))
        ids = sorted({sp.event_id for sp in spends if sp.event_id})
        ledgered = False
        if ids and self._ledger(db):
            cond, params = self._in("id", ids)
            ledgered = bool(db.execute(f"SELECT 1 FROM events WHERE {cond} LIMIT 1", params))
        return LeaseResult(refusal, {k: v[0] for k, v in held.items()}, used, ledgered)

    def reconcile(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        out: dict[str, Reconciled] = {}
        for key in sorted(seeds):  # one short transaction per counter: writers wait milliseconds
            now = time.time()
            with self._write() as db:
                ledger = self._ledger(db)
                # the row locked first; the reads below then see every settlement committed before it
                row = self._reconcile_row(db, key, now)
                # ledger and pending parts in one statement: one snapshot, an event counts once
                sql, params = counter_sums_sql(seeds[key], key, ledger)
                spent, un, kept = (int(x) for x in db.execute(sql, params)[0])
                after = spent + un + kept
                db.execute("UPDATE budget_counters SET spent = ? WHERE counter = ?", (after, key))
                if ledger:  # rows that are done go: their amounts count from the ledger only
                    db.execute(
                        f"DELETE FROM budget_pending WHERE counter = ? AND ({_DONE} "
                        "OR amount = 0 AND kept = 0 OR settled_at < ?)",
                        (key, now - KEEP_S),
                    )
                out[key] = Reconciled(int(row[0]) if row else after, after, spent, un, kept)
            self._remember([key])
        now = time.time()
        if now >= self._next_prune:
            self._next_prune = now + 60
            with self._write_one() as db:
                db.execute(_PRUNE_PENDING_SQL if self._ledger(db) else _PRUNE_OLD_SQL, (now - KEEP_S,))
        if now >= self._next_vacuum:
            self._next_vacuum = now + VACUUM_S
            self._vacuum_pending()
        return out

    def _vacuum_pending(self) -> None:
        """Clear out `budget_pending`'s deleted rows, where the database keeps them (PostgreSQL)."""

    def check(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        out: dict[str, Reconciled] = {}
        with self._read() as db:
            ledger = self._ledger(db)
            for key in sorted(seeds):  # one statement per counter: one snapshot, nothing written
                sql, params = counter_sums_sql(seeds[key], key, ledger)
                [(spent, un, kept, before)] = db.execute(
                    f"SELECT q.*, (SELECT spent FROM budget_counters WHERE counter = ?) FROM ({sql}) AS q",
                    [key, *params],
                )
                out[key] = _checked(spent, un, kept, before)
        return out

    def inflight(self, keys: Sequence[str]) -> int:
        with self._read() as db:
            rows = db.execute("SELECT items FROM budget_reservations")
        return _count_calls([r[0] for r in rows], keys)

    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        keys = list(keys)
        if not keys:
            return {}
        cond, params = self._in("counter", keys)
        with self._read() as db:
            rows = db.execute(f"SELECT counter, spent, reserved FROM budget_counters WHERE {cond}", params)
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        cond, params = self._prefix("counter", prefix)
        with self._read() as db:
            rows = db.execute(f"SELECT counter, spent, reserved FROM budget_counters WHERE {cond}", params)
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def claim_once(self, key: str) -> bool:
        with self._write_one() as db:
            db.execute(
                "INSERT INTO budget_claims (key, claimed_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (key, time.time()),
            )
            return db.rowcount == 1

    def sweep(self, now: float | None = None) -> int:
        with self._write() as db:
            return self._sweep_in(db, time.time() if now is None else now)
