"""Budget counters in the ledger's SQLite file: `BEGIN IMMEDIATE` serializes writers across processes."""

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
    _items,
    _lease_items,
    _lease_keys,
    _lease_plan,
    _merge,
    _pending_rows,
)

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_counters (
  counter TEXT PRIMARY KEY, spent INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
  updated_at REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS budget_reservations (
  id TEXT PRIMARY KEY, items TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS budget_reservations_expiry ON budget_reservations(expires_at);
CREATE TABLE IF NOT EXISTS budget_claims (key TEXT PRIMARY KEY, claimed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS budget_pending (
  event_id TEXT NOT NULL, counter TEXT NOT NULL, amount BIGINT NOT NULL, kept BIGINT NOT NULL DEFAULT 0,
  settled_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (event_id, counter));
CREATE INDEX IF NOT EXISTS budget_pending_counter ON budget_pending (counter);
CREATE TABLE IF NOT EXISTS budget_owners (
  owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid BIGINT NOT NULL, started TEXT NOT NULL DEFAULT '',
  heartbeat DOUBLE PRECISION NOT NULL);
"""


class SQLiteCounters(CounterStore):
    """Counters in the ledger's SQLite file; `BEGIN IMMEDIATE` serializes writers across processes."""

    def __init__(self, path: str) -> None:
        import sqlite3

        self.path = path
        self._lock = threading.Lock()
        self._init_owner()
        try:
            self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx():
                for stmt in _SQLITE_SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open budget counters in {path}: {e}") from e
        self._next_sweep = 0.0
        #: counters known to exist (created and seeded): not checked again by this process
        self._known: set[str] = set()
        self._has_ledger = False
        self._next_prune = 0.0
        self.reap()  # a predecessor killed on this storage leaves nothing reserved

    def _beat(self, now: float) -> None:
        with self._lock, self._tx():
            self._db.execute(
                "INSERT INTO budget_owners(owner, host, pid, started, heartbeat) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(owner) DO UPDATE SET heartbeat = excluded.heartbeat",
                (self.owner, self.host, self.pid, self.started, now),
            )

    def _owners(self) -> list[tuple[str, str, int, str, float]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, host, pid, started, heartbeat FROM budget_owners"
            ).fetchall()
        return [(str(o), str(h), int(p), str(st), float(b)) for o, h, p, st, b in rows]

    def _release_owner(self, owner: str) -> int:
        now = time.time()
        with self._lock, self._tx():
            # ids of one owner are "owner/...": a range of the primary key ('0' follows '/')
            rows = self._db.execute(
                "SELECT id, items FROM budget_reservations WHERE id >= ? AND id < ?",
                (owner + "/", owner + "0"),
            ).fetchall()
            for rid, items in rows:
                for key, amount, *_ in json.loads(items):
                    self._add(key, 0, -int(amount), now)
                self._db.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))
            self._db.execute("DELETE FROM budget_owners WHERE owner = ?", (owner,))
        return len(rows)

    def _ledger(self) -> bool:
        """The ledger's tables are in this file (asked until they are; a read error raises: fail closed)."""
        if not self._has_ledger:
            self._has_ledger = has_ledger_tables(lambda sql, params: self._db.execute(sql, params).fetchall())
        return self._has_ledger

    def _tx(self) -> _SQLiteTx:
        return _SQLiteTx(self._db)

    def _used(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT counter, spent, reserved FROM budget_counters WHERE counter IN ({marks})", list(keys)
        ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def _add(self, key: str, spent: int, reserved: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO budget_counters(counter, spent, reserved, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(counter) DO UPDATE SET spent = spent + excluded.spent, "
            "reserved = MAX(0, reserved + excluded.reserved), updated_at = excluded.updated_at",
            (key, spent, reserved, now),
        )

    def _sweep_locked(self, now: float) -> int:
        rows = self._db.execute(
            "SELECT id, items FROM budget_reservations WHERE expires_at < ?", (now,)
        ).fetchall()
        for rid, items in rows:
            for key, amount, *_ in json.loads(items):
                self._add(key, 0, -int(amount), now)
            self._db.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))
        return len(rows)

    def _ensure_locked(self, seeds: Mapping[str, SeedSpec], now: float) -> list[str]:
        """Create missing counters seeded from the ledger; returns the keys to remember after COMMIT."""
        if not seeds:
            return []
        fresh = [k for k in sorted(seeds) if k not in self._known]
        if not fresh:
            return []
        ledger = self._ledger()
        for key in fresh:
            # inside BEGIN IMMEDIATE: no ledger write can land between the read and the insert
            expr, params = seed_sql(seeds[key]) if ledger else ("0", [])
            self._db.execute(
                f"INSERT INTO budget_counters(counter, spent, reserved, updated_at) SELECT ?, {expr}, 0, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM budget_counters WHERE counter = ?)",
                [key, *params, now, key],
            )
        return fresh

    def _remember(self, keys: Sequence[str]) -> None:
        if len(self._known) > 100_000:  # old windows' keys: forget them all, re-checked once if used again
            self._known.clear()
        self._known.update(keys)

    def ensure(self, seeds: Mapping[str, SeedSpec]) -> None:
        with self._lock:
            if all(k in self._known for k in seeds):  # nothing to create: no write transaction
                return
            with self._tx():
                fresh = self._ensure_locked(seeds, time.time())
            self._remember(fresh)

    def ledger_values(self, column: str, start_us: int, end_us: int) -> list[str]:
        with self._lock:
            if not self._ledger():
                return []
            sql, params = values_sql(column, start_us, end_us)
            return [str(r[0]) for r in self._db.execute(sql, params).fetchall()]

    def reserve(
        self, rid: str, charges: Sequence[Charge], ttl_s: float, seeds: Mapping[str, SeedSpec] | None = None
    ) -> Refusal | None:
        self._hold_lease()
        now = time.time()
        with self._lock:
            with self._tx():
                fresh = self._ensure_locked(seeds or {}, now)
                if now >= self._next_sweep:
                    self._sweep_locked(now)
                    self._next_sweep = now + 30
                refusal = _check(charges, self._used(_all_keys(charges)))
                if refusal is None:
                    items = _items(charges)
                    for key, amount in items:
                        self._add(key, 0, amount, now)
                    self._db.execute(
                        "INSERT INTO budget_reservations(id, items, expires_at) VALUES (?, ?, ?)",
                        (rid, json.dumps(items), now + ttl_s),
                    )
            self._remember(fresh)  # committed (a refusal commits the seeded counters too)
        return refusal

    def settle(
        self,
        rid: str,
        actual: Sequence[tuple[str, int]],
        event_id: str | None = None,
        ledgered: Sequence[tuple[str, int]] | None = None,
    ) -> bool:
        now = time.time()
        with self._lock, self._tx():
            self._drop_locked(rid, now)
            for key, amount in actual:
                self._add(key, int(amount), 0, now)
            if event_id is None:
                return False
            shown = dict(ledgered) if ledgered is not None else dict(actual)
            for key, amount in _merge(actual).items():
                part = min(amount, int(shown.get(key, amount)))
                self._db.execute(
                    "INSERT INTO budget_pending(event_id, counter, amount, kept, settled_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(event_id, counter) DO UPDATE SET amount = amount + excluded.amount, "
                    "kept = kept + excluded.kept, settled_at = excluded.settled_at",
                    (event_id, key, part, amount - part, now),
                )
            return self._ledger() and bool(
                self._db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
            )

    def reconcile(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        out: dict[str, Reconciled] = {}
        for key in sorted(seeds):  # one short transaction per counter: writers wait milliseconds
            with self._lock, self._tx():
                ledger = self._ledger()
                sql, params = counter_sums_sql(seeds[key], key, ledger)
                spent, un, kept = (int(x) for x in self._db.execute(sql, params).fetchone())
                row = self._db.execute(
                    "SELECT spent FROM budget_counters WHERE counter = ?", (key,)
                ).fetchone()
                after = spent + un + kept
                now = time.time()
                self._db.execute(
                    "INSERT INTO budget_counters(counter, spent, reserved, updated_at) VALUES (?, ?, 0, ?) "
                    "ON CONFLICT(counter) DO UPDATE SET spent = excluded.spent",
                    (key, after, now),
                )
                if ledger:  # settlements the ledger now holds count from the ledger only
                    self._db.execute(
                        "UPDATE budget_pending SET amount = 0 WHERE counter = ? AND amount <> 0 "
                        "AND event_id IN (SELECT id FROM events)",
                        (key,),
                    )
                    self._db.execute(
                        "DELETE FROM budget_pending WHERE counter = ? AND (amount = 0 AND (kept = 0 OR "
                        "event_id IN (SELECT id FROM events WHERE cost_nano IS NOT NULL)) OR settled_at < ?)",
                        (key, now - KEEP_S),
                    )
                out[key] = Reconciled(int(row[0]) if row else after, after, spent, un, kept)
            self._remember([key])
        now = time.time()
        if now >= self._next_prune:
            self._next_prune = now + 60
            with self._lock, self._tx():
                self._db.execute(_PRUNE_PENDING_SQL if self._ledger() else _PRUNE_OLD_SQL, (now - KEEP_S,))
        return out

    def _drop_locked(self, rid: str, now: float) -> None:
        row = self._db.execute("SELECT items FROM budget_reservations WHERE id = ?", (rid,)).fetchone()
        if row is not None:
            for key, amount, *_ in json.loads(row[0]):
                self._add(key, 0, -int(amount), now)
            self._db.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))

    def release(self, rid: str) -> None:
        with self._lock, self._tx():
            self._drop_locked(rid, time.time())

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
        now = time.time()
        with self._lock:
            with self._tx():
                fresh = self._ensure_locked(seeds or {}, now)
                if now >= self._next_sweep:
                    self._sweep_locked(now)
                    self._next_sweep = now + 30
                row = self._db.execute(
                    "SELECT items FROM budget_reservations WHERE id = ?", (rid,)
                ).fetchone()
                held = {k: [int(a), int(n[0]) if n else 0] for k, a, *n in json.loads(row[0])} if row else {}
                d_spent, d_res = _lease_plan(held, spends, give_back)
                for key in sorted(set(d_spent) | set(d_res)):
                    self._add(key, d_spent.get(key, 0), d_res.get(key, 0), now)
                for (event_id, key), (part, kept) in sorted(_pending_rows(spends).items()):
                    self._db.execute(
                        "INSERT INTO budget_pending(event_id, counter, amount, kept, settled_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(event_id, counter) DO UPDATE SET amount = amount + excluded.amount, "
                        "kept = kept + excluded.kept, settled_at = excluded.settled_at",
                        (event_id, key, part, kept, now),
                    )
                keys = _lease_keys(spends, grow, give_back)
                refusal = _check(grow, self._used(keys)) if grow else None
                if grow and refusal is None:
                    for key, amount in _items(grow):
                        self._add(key, 0, amount, now)
                        held.setdefault(key, [0, 0])[0] += amount
                items = _lease_items(held, calls)
                if items:
                    self._db.execute(
                        "INSERT INTO budget_reservations(id, items, expires_at) VALUES (?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET items = excluded.items, expires_at = excluded.expires_at",
                        (rid, json.dumps(items), now + ttl_s),
                    )
                elif row is not None:
                    self._db.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))
                totals = self._used(keys)
                ids = sorted({sp.event_id for sp in spends if sp.event_id})
                ledgered = False
                if ids and self._ledger():
                    marks = ",".join("?" * len(ids))
                    ledgered = bool(
                        self._db.execute(
                            f"SELECT 1 FROM events WHERE id IN ({marks}) LIMIT 1", ids
                        ).fetchone()
                    )
            self._remember(fresh)
        return LeaseResult(refusal, {k: v[0] for k, v in held.items()}, totals, ledgered)

    def inflight(self, keys: Sequence[str]) -> int:
        with self._lock:
            rows = self._db.execute("SELECT items FROM budget_reservations").fetchall()
        return _count_calls([r[0] for r in rows], keys)

    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        with self._lock:
            return self._used(list(keys))

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT counter, spent, reserved FROM budget_counters WHERE substr(counter, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def claim_once(self, key: str) -> bool:
        with self._lock, self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO budget_claims(key, claimed_at) VALUES (?, ?)", (key, time.time())
            )
            return cur.rowcount == 1

    def sweep(self, now: float | None = None) -> int:
        with self._lock, self._tx():
            return self._sweep_locked(time.time() if now is None else now)

    def close(self) -> None:
        self._stop_lease()
        with self._lock:
            self._db.close()


class _SQLiteTx:
    def __init__(self, db: Any) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
