"""Budget counters in the ledger's SQLite file: `BEGIN IMMEDIATE` serializes writers across processes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ...errors import StorageError
from ...store.dialect import Param
from ...store.migrations import apply_migrations
from ..seed import SeedSpec
from .base import Charge, Refusal, _all_keys, _check, _items, _merge
from .sql import _PENDING_UPSERT, SQLConn, SQLCounters


class SQLiteCounters(SQLCounters):
    """Counters in the ledger's SQLite file; `BEGIN IMMEDIATE` serializes writers across processes."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._init_owner()
        self._init_sql()
        try:
            self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._conn = SQLConn(self._db, postgres=False)
            # the tables come from the ledger's migrations (already applied when the ledger opened)
            apply_migrations(self._write, "sqlite")
        except sqlite3.Error as e:
            raise StorageError(f"cannot open budget counters in {path}: {e}") from e
        self.reap()  # a predecessor killed on this storage leaves nothing reserved

    # ------------------------------------------------------------------ the dialect
    @contextmanager
    def _write(self) -> Iterator[SQLConn]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _write_one(self) -> AbstractContextManager[SQLConn]:
        return self._write()

    @contextmanager
    def _read(self) -> Iterator[SQLConn]:
        with self._lock:
            yield self._conn

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list[Param]]:
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def _prefix(self, column: str, prefix: str) -> tuple[str, list[Param]]:
        return f"substr({column}, 1, ?) = ?", [len(prefix), prefix]

    def _owned(self, owner: str) -> tuple[str, list[Param]]:
        # ids of one owner are "owner/...": a range of the primary key ('0' follows '/')
        return "id >= ? AND id < ?", [owner + "/", owner + "0"]

    def _pop_reservations(self, db: SQLConn, where: str, params: Sequence[Param]) -> list[str]:
        rows = db.execute(f"SELECT items FROM budget_reservations WHERE {where}", params)
        if rows:
            db.execute(f"DELETE FROM budget_reservations WHERE {where}", params)
        return [r[0] for r in rows]

    def _lock_counters(self, db: SQLConn, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not keys:  # BEGIN IMMEDIATE holds the whole file
            return {}
        cond, params = self._in("counter", keys)
        rows = db.execute(f"SELECT counter, spent, reserved FROM budget_counters WHERE {cond}", params)
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def _bump(self, db: SQLConn, key: str, spent: int, reserved: int, now: float) -> None:
        self._add(db, key, spent, reserved, now)

    def _reconcile_row(self, db: SQLConn, key: str, now: float) -> tuple[Any, ...] | None:
        rows = db.execute("SELECT spent FROM budget_counters WHERE counter = ?", (key,))
        db.execute(
            "INSERT INTO budget_counters (counter, updated_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (key, now),
        )
        return rows[0] if rows else None

    @contextmanager
    def _step(self, seeds: Mapping[str, SeedSpec]) -> Iterator[tuple[SQLConn, float]]:
        now = time.time()
        with self._write() as db:
            # inside BEGIN IMMEDIATE: no ledger write can land between a seed's read and its insert
            fresh = self._unknown(seeds)
            self._seed_in(db, fresh, seeds, now)
            if self._sweep_due(now):
                self._sweep_in(db, now)
            yield db, now
        self._remember(fresh)  # committed (a refusal commits the seeded counters too)

    # ------------------------------------------------------------------ reserve and settle in Python
    def reserve(
        self, rid: str, charges: Sequence[Charge], ttl_s: float, seeds: Mapping[str, SeedSpec] | None = None
    ) -> Refusal | None:
        self._hold_lease()
        with self._step(seeds or {}) as (db, now):
            refusal = _check(charges, self._lock_counters(db, _all_keys(charges)))
            if refusal is None:
                items = _items(charges)
                for key, amount in items:
                    self._add(db, key, 0, amount, now)
                db.execute(
                    "INSERT INTO budget_reservations (id, items, expires_at) VALUES (?, ?, ?)",
                    (rid, json.dumps(items), now + ttl_s),
                )
        return refusal

    def settle(
        self,
        rid: str,
        actual: Sequence[tuple[str, int]],
        event_id: str | None = None,
        ledgered: Sequence[tuple[str, int]] | None = None,
    ) -> bool:
        now = time.time()
        with self._write() as db:
            self._unreserve(db, self._pop_reservations(db, "id = ?", [rid]), now)
            for key, amount in actual:
                self._add(db, key, int(amount), 0, now)
            if event_id is None:
                return False
            shown = dict(ledgered) if ledgered is not None else dict(actual)
            rows = []
            for key, amount in _merge(actual).items():
                part = min(amount, int(shown.get(key, amount)))
                rows.append((event_id, key, part, amount - part, now))
            db.executemany(_PENDING_UPSERT, rows)
            return self._ledger(db) and bool(db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)))

    def release(self, rid: str) -> None:
        with self._write() as db:
            now = time.time()
            self._unreserve(db, self._pop_reservations(db, "id = ?", [rid]), now)

    def close(self) -> None:
        self._stop_lease()
        with self._lock:
            self._db.close()
