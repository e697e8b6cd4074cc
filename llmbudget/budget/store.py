"""Budget counters and reservations, atomic across threads and processes.

Each counter (budget, scope value, window) holds `spent` and `reserved` as integers (nano-USD or
tokens). `reserve` checks and books every charge of a call in ONE atomic step, all or nothing:

- SQLite: `BEGIN IMMEDIATE` on the ledger's database file (one machine, any number of processes);
- PostgreSQL: `SELECT ... FOR UPDATE` on the counter rows, locked in key order (no deadlocks);
- Redis: one Lua script (several machines; a single Redis, not a cluster).

A reservation not settled within its TTL (a crashed process) is released by the next sweep.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StorageError


@dataclass(frozen=True, slots=True)
class Charge:
    """What one call books on one budget."""

    budget: str
    #: counter the amount is added to
    key: str
    #: counters summed for the limit check (includes `key`)
    read_keys: tuple[str, ...]
    #: None: count only, never refuse
    limit: int | None
    amount: int
    unit: str = "usd"


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first charge that did not fit: its budget, what is used already and the limit."""

    budget: str
    spent: int
    reserved: int
    limit: int
    amount: int


class CounterStore(ABC):
    """Atomic budget counters. Every method is safe to call from many threads."""

    @abstractmethod
    def reserve(self, rid: str, charges: Sequence[Charge], ttl_s: float) -> Refusal | None:
        """Book every charge or none; returns the first that would cross its limit."""

    @abstractmethod
    def settle(self, rid: str, actual: Sequence[tuple[str, int]]) -> None:
        """Replace the reservation `rid` by the real amounts [(counter key, amount)]."""

    @abstractmethod
    def release(self, rid: str) -> None:
        """Drop the reservation `rid` (nothing was spent)."""

    @abstractmethod
    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(spent, reserved) for each existing counter among `keys`."""

    @abstractmethod
    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        """(spent, reserved) of every counter whose key starts with `prefix` (status reports)."""

    @abstractmethod
    def claim_once(self, key: str) -> bool:
        """True the first time `key` is claimed by any process (alert de-duplication)."""

    @abstractmethod
    def sweep(self, now: float | None = None) -> int:
        """Release reservations past their expiry; returns how many."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _check(charges: Sequence[Charge], used: dict[str, tuple[int, int]]) -> Refusal | None:
    for c in charges:
        if c.limit is None:
            continue
        spent = sum(used.get(k, (0, 0))[0] for k in c.read_keys)
        reserved = sum(used.get(k, (0, 0))[1] for k in c.read_keys)
        if spent + reserved + c.amount > c.limit:
            return Refusal(c.budget, spent, reserved, c.limit, c.amount)
    return None


def _all_keys(charges: Sequence[Charge]) -> list[str]:
    return sorted({k for c in charges for k in c.read_keys} | {c.key for c in charges})


def _items(charges: Sequence[Charge]) -> list[list[Any]]:
    merged: dict[str, int] = {}
    for c in charges:
        merged[c.key] = merged.get(c.key, 0) + c.amount
    return [[k, v] for k, v in sorted(merged.items())]


# ---------------------------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_counters (
  counter TEXT PRIMARY KEY, spent INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
  updated_at REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS budget_reservations (
  id TEXT PRIMARY KEY, items TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS budget_reservations_expiry ON budget_reservations(expires_at);
CREATE TABLE IF NOT EXISTS budget_claims (key TEXT PRIMARY KEY, claimed_at REAL NOT NULL);
"""


class SQLiteCounters(CounterStore):
    """Counters in the ledger's SQLite file; `BEGIN IMMEDIATE` serializes writers across processes."""

    def __init__(self, path: str) -> None:
        import sqlite3

        self.path = path
        self._lock = threading.Lock()
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

    def _tx(self) -> _SQLiteTx:
        return _SQLiteTx(self._db)

    def _used(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(f"SELECT counter, spent, reserved FROM budget_counters WHERE counter IN ({marks})",
                                list(keys)).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def _add(self, key: str, spent: int, reserved: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO budget_counters(counter, spent, reserved, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(counter) DO UPDATE SET spent = spent + excluded.spent, "
            "reserved = MAX(0, reserved + excluded.reserved), updated_at = excluded.updated_at",
            (key, spent, reserved, now))

    def _sweep_locked(self, now: float) -> int:
        rows = self._db.execute("SELECT id, items FROM budget_reservations WHERE expires_at < ?", (now,)).fetchall()
        for rid, items in rows:
            for key, amount in json.loads(items):
                self._add(key, 0, -int(amount), now)
            self._db.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))
        return len(rows)

    def reserve(self, rid: str, charges: Sequence[Charge], ttl_s: float) -> Refusal | None:
        now = time.time()
        with self._lock, self._tx():
            if now >= self._next_sweep:
                self._sweep_locked(now)
                self._next_sweep = now + 30
            refusal = _check(charges, self._used(_all_keys(charges)))
            if refusal is not None:
                return refusal
            items = _items(charges)
            for key, amount in items:
                self._add(key, 0, amount, now)
            self._db.execute("INSERT INTO budget_reservations(id, items, expires_at) VALUES (?, ?, ?)",
                             (rid, json.dumps(items), now + ttl_s))
        return None

    def settle(self, rid: str, actual: Sequence[tuple[str, int]]) -> None:
        now = time.time()
        with self._lock, self._tx():
            self._drop_locked(rid, now)
            for key, amount in actual:
                self._add(key, int(amount), 0, now)

    def _drop_locked(self, rid: str, now: float) -> None:
        row = self._db.execute("SELECT items FROM budget_reservations WHERE id = ?", (rid,)).fetchone()
        if row is not None:
            for key, amount in json.loads(row[0]):
                self._add(key, 0, -int(amount), now)
            self._db.execute("DELETE FROM budget_reservations WHERE id = ?", (rid,))

    def release(self, rid: str) -> None:
        with self._lock, self._tx():
            self._drop_locked(rid, time.time())

    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        with self._lock:
            return self._used(list(keys))

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT counter, spent, reserved FROM budget_counters "
                                    "WHERE substr(counter, 1, ?) = ?", (len(prefix), prefix)).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def claim_once(self, key: str) -> bool:
        with self._lock, self._tx():
            cur = self._db.execute("INSERT OR IGNORE INTO budget_claims(key, claimed_at) VALUES (?, ?)",
                                   (key, time.time()))
            return cur.rowcount == 1

    def sweep(self, now: float | None = None) -> int:
        with self._lock, self._tx():
            return self._sweep_locked(time.time() if now is None else now)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SQLiteTx:
    def __init__(self, db: Any) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


# ---------------------------------------------------------------------------------------------- PostgreSQL

_PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS budget_counters (
      counter TEXT PRIMARY KEY, spent BIGINT NOT NULL DEFAULT 0, reserved BIGINT NOT NULL DEFAULT 0,
      updated_at DOUBLE PRECISION NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS budget_reservations (
      id TEXT PRIMARY KEY, items TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS budget_reservations_expiry ON budget_reservations(expires_at)",
    "CREATE TABLE IF NOT EXISTS budget_claims (key TEXT PRIMARY KEY, claimed_at DOUBLE PRECISION NOT NULL)",
]
#: advisory lock id serializing the CREATE TABLEs of concurrent first starts
_PG_DDL_LOCK = 0x6C6D6231


class PostgresCounters(CounterStore):
    """Counters in PostgreSQL; rows locked with `SELECT ... FOR UPDATE` in key order."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as e:  # pragma: no cover - extra not installed
            raise StorageError("PostgreSQL budgets need `pip install 'llmbudget[postgres]'`") from e
        self.url = url
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, timeout=30,
                                    kwargs={"autocommit": False})
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_DDL_LOCK,))
            for stmt in _PG_SCHEMA:
                conn.execute(stmt)
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()

    @staticmethod
    def _add(conn: Any, key: str, spent: int, reserved: int, now: float) -> None:
        conn.execute(
            "INSERT INTO budget_counters(counter, spent, reserved, updated_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT(counter) DO UPDATE SET spent = budget_counters.spent + excluded.spent, "
            "reserved = GREATEST(0, budget_counters.reserved + excluded.reserved), updated_at = excluded.updated_at",
            (key, spent, reserved, now))

    def reserve(self, rid: str, charges: Sequence[Charge], ttl_s: float) -> Refusal | None:
        now = time.time()
        if now >= self._next_sweep and self._sweep_lock.acquire(blocking=False):
            try:
                self._next_sweep = now + 30
                self.sweep(now)
            finally:
                self._sweep_lock.release()
        keys = _all_keys(charges)
        items = _items(charges)
        with self._pool.connection() as conn:
            # make sure every written counter exists so it can be row-locked; sorted: no deadlocks
            conn.execute(
                "INSERT INTO budget_counters(counter) SELECT unnest(%s::text[]) ORDER BY 1 ON CONFLICT DO NOTHING",
                ([k for k, _ in items],))
            rows = conn.execute(
                "SELECT counter, spent, reserved FROM budget_counters WHERE counter = ANY(%s) "
                "ORDER BY counter FOR UPDATE", (keys,)).fetchall()
            refusal = _check(charges, {r[0]: (int(r[1]), int(r[2])) for r in rows})
            if refusal is not None:
                conn.rollback()
                return refusal
            for key, amount in items:
                conn.execute("UPDATE budget_counters SET reserved = reserved + %s, updated_at = %s WHERE counter = %s",
                             (amount, now, key))
            conn.execute("INSERT INTO budget_reservations(id, items, expires_at) VALUES (%s, %s, %s)",
                         (rid, json.dumps(items), now + ttl_s))
        return None

    def _drop(self, conn: Any, rid: str, now: float) -> None:
        row = conn.execute("DELETE FROM budget_reservations WHERE id = %s RETURNING items", (rid,)).fetchone()
        if row is not None:
            for key, amount in sorted(json.loads(row[0])):
                self._add(conn, key, 0, -int(amount), now)

    def settle(self, rid: str, actual: Sequence[tuple[str, int]]) -> None:
        now = time.time()
        with self._pool.connection() as conn:
            self._drop(conn, rid, now)
            for key, amount in sorted(actual):
                self._add(conn, key, int(amount), 0, now)

    def release(self, rid: str) -> None:
        with self._pool.connection() as conn:
            self._drop(conn, rid, time.time())

    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT counter, spent, reserved FROM budget_counters WHERE counter = ANY(%s)",
                                (list(keys),)).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT counter, spent, reserved FROM budget_counters WHERE left(counter, %s) = %s",
                                (len(prefix), prefix)).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def claim_once(self, key: str) -> bool:
        with self._pool.connection() as conn:
            cur = conn.execute("INSERT INTO budget_claims(key, claimed_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                               (key, time.time()))
            return cur.rowcount == 1

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._pool.connection() as conn:
            rows = conn.execute("DELETE FROM budget_reservations WHERE expires_at < %s RETURNING items",
                                (now,)).fetchall()
            merged: dict[str, int] = {}
            for (items,) in rows:
                for key, amount in json.loads(items):
                    merged[key] = merged.get(key, 0) + int(amount)
            for key in sorted(merged):
                self._add(conn, key, 0, -merged[key], now)
        return len(rows)

    def close(self) -> None:
        self._pool.close()


# ---------------------------------------------------------------------------------------------- Redis

_LUA_SWEEP = """
local p = ARGV[1]
-- integers as digits (Lua would print 1e+15 style); amounts stay below 2^53
local function n(x) return string.format('%.0f', x) end
local now = tonumber(ARGV[3])
local function sweep()
  local due = redis.call('ZRANGEBYSCORE', p .. 'rexp', '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    local items = redis.call('GET', p .. 'r:' .. id)
    if items then
      for _, it in ipairs(cjson.decode(items)) do
        local ck = p .. 'c:' .. it[1]
        local r = redis.call('HINCRBY', ck, 'r', n(-it[2]))
        if r < 0 then redis.call('HSET', ck, 'r', 0) end
      end
      redis.call('DEL', p .. 'r:' .. id)
    end
    redis.call('ZREM', p .. 'rexp', id)
  end
end
sweep()
return 1
"""

_LUA_RESERVE = _LUA_SWEEP.replace("sweep()\nreturn 1\n", "sweep()\n") + """local charges = cjson.decode(ARGV[4])
for i, c in ipairs(charges) do
  if c.l >= 0 then
    local s, r = 0, 0
    for _, k in ipairs(c.r) do
      local v = redis.call('HMGET', p .. 'c:' .. k, 's', 'r')
      s = s + (tonumber(v[1]) or 0)
      r = r + (tonumber(v[2]) or 0)
    end
    if s + r + c.a > c.l then
      return {i, s, r}
    end
  end
end
local items = cjson.decode(ARGV[5])
for _, it in ipairs(items) do
  local ck = p .. 'c:' .. it[1]
  redis.call('HINCRBY', ck, 'r', n(it[2]))
  redis.call('EXPIRE', ck, 3456000)
end
redis.call('SET', p .. 'r:' .. ARGV[2], ARGV[5])
redis.call('ZADD', p .. 'rexp', now + tonumber(ARGV[6]), ARGV[2])
return {0, 0, 0}
"""

_LUA_SETTLE = """
local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
local items = redis.call('GET', p .. 'r:' .. ARGV[2])
if items then
  for _, it in ipairs(cjson.decode(items)) do
    local ck = p .. 'c:' .. it[1]
    local r = redis.call('HINCRBY', ck, 'r', n(-it[2]))
    if r < 0 then redis.call('HSET', ck, 'r', 0) end
  end
  redis.call('DEL', p .. 'r:' .. ARGV[2])
  redis.call('ZREM', p .. 'rexp', ARGV[2])
end
for _, it in ipairs(cjson.decode(ARGV[3])) do
  local ck = p .. 'c:' .. it[1]
  redis.call('HINCRBY', ck, 's', n(it[2]))
  redis.call('EXPIRE', ck, 3456000)
end
return 1
"""


class RedisCounters(CounterStore):
    """Counters in Redis hashes; check-and-book is one Lua script, so it is atomic across replicas."""

    def __init__(self, url: str, *, prefix: str = "llmb:budget:") -> None:
        try:
            import redis
        except ImportError as e:  # pragma: no cover - extra not installed
            raise StorageError("Redis budgets need `pip install 'llmbudget[redis]'`") from e
        self.url = url
        self.prefix = prefix
        self._r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                       max_connections=64, health_check_interval=30)
        self._reserve = self._r.register_script(_LUA_RESERVE)
        self._settle = self._r.register_script(_LUA_SETTLE)
        self._sweep = self._r.register_script(_LUA_SWEEP)

    def reserve(self, rid: str, charges: Sequence[Charge], ttl_s: float) -> Refusal | None:
        spec = [{"r": list(c.read_keys), "l": -1 if c.limit is None else c.limit, "a": c.amount} for c in charges]
        res = self._reserve(args=[self.prefix, rid, time.time(), json.dumps(spec), json.dumps(_items(charges)),
                                  ttl_s])
        idx, spent, reserved = (int(x) for x in res)
        if idx == 0:
            return None
        c = charges[idx - 1]
        return Refusal(c.budget, spent, reserved, int(c.limit or 0), c.amount)

    def settle(self, rid: str, actual: Sequence[tuple[str, int]]) -> None:
        self._settle(args=[self.prefix, rid, json.dumps([[k, int(v)] for k, v in actual])])

    def release(self, rid: str) -> None:
        self._settle(args=[self.prefix, rid, "[]"])

    def totals(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        keys = list(keys)
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(self.prefix + "c:" + k, "s", "r")
        out: dict[str, tuple[int, int]] = {}
        for k, (s, r) in zip(keys, pipe.execute(), strict=True):
            if s is not None or r is not None:
                out[k] = (int(s or 0), int(r or 0))
        return out

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        import re

        pattern = self.prefix + "c:" + re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        keys = [k.decode() if isinstance(k, bytes) else k for k in self._r.scan_iter(match=pattern, count=500)]
        return self.totals([k[len(self.prefix) + 2:] for k in keys])

    def claim_once(self, key: str) -> bool:
        return bool(self._r.set(self.prefix + "claim:" + key, "1", nx=True, ex=3600 * 24 * 400))

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        due = int(self._r.zcount(self.prefix + "rexp", "-inf", now))
        self._sweep(args=[self.prefix, "", now])
        return due

    def close(self) -> None:
        self._r.close()


def open_counters(db_url: str, redis_url: str | None = None, *, redis_prefix: str = "llmb:budget:") -> CounterStore:
    """Counters in Redis when `redis_url` is set, else in the ledger's database (`db_url`)."""
    if redis_url:
        return RedisCounters(redis_url, prefix=redis_prefix)
    if db_url.startswith(("postgresql://", "postgres://")):
        return PostgresCounters(db_url)
    path = db_url[len("sqlite:///"):] if db_url.startswith("sqlite:///") else db_url
    if path.startswith("sqlite://"):
        path = path[len("sqlite://"):]
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SQLiteCounters(path)
