"""Budget counters and reservations, atomic across threads and processes.

Each counter (budget, scope value, window) holds `spent` and `reserved` as integers (nano-USD or
tokens). `reserve` checks and books every charge of a call in ONE atomic step, all or nothing:

- SQLite: `BEGIN IMMEDIATE` on the ledger's database file (one machine, any number of processes);
- PostgreSQL: `SELECT ... FOR UPDATE` on the counter rows, locked in key order (no deadlocks);
- Redis: one Lua script (several machines; a single Redis, not a cluster).

Reservations never outlive their process: each store registers an owner (host, pid, process start
time) with a heartbeat every `BEAT_S` seconds, and a reservation id starts with its owner's id.
Any store (a restarted successor on the same storage, another replica, the CLI) releases the
reservations of an owner whose heartbeat is older than `OWNER_STALE_S` or whose process is gone
from this host. The reservation TTL remains a last resort.

Counters follow the ledger (`reconcile`): a counter's `spent` is the ledger's spend for its window
plus what the gate settled that the ledger does not hold yet. Each settlement leaves a pending row
(event id, counter, amount the ledger will show, amount it never will: an unpriced call's worst
case); once the event is in the ledger its amount is dropped from the pending part, so it counts
once, from the ledger. `reconcile` recomputes `spent` that way inside one transaction (SQLite
`BEGIN IMMEDIATE`, PostgreSQL row locks; Redis: the ledger is read first, then one script).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StorageError
from .seed import LedgerSeeder, SeedSpec, counter_sums_sql, has_ledger_tables, seed_sql, values_sql

#: pending rows and counters are forgotten this long after their last settlement (40 days)
KEEP_S = 3456000
#: seconds between an owner's heartbeats, and the age at which a silent owner counts as dead
BEAT_S = 2.0
OWNER_STALE_S = 10.0

log = logging.getLogger("llmbudget.budget")


def _proc_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc, clock ticks since boot); '' when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return "" if os.path.isdir("/proc/self") else None
    except OSError:
        return None
    return "" if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, started: str) -> bool:
    """Whether the process that registered as (pid, start time) still runs on this host."""
    now = _proc_start(pid)
    if now is not None:
        return bool(now) and (not started or now == started)  # the same pid reused: another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def owner_of(rid: str) -> str | None:
    """The owner id a reservation id starts with (None for ids from before owners existed)."""
    head, sep, _ = rid.rpartition("/")
    return head if sep else None


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


@dataclass(frozen=True, slots=True)
class Spend:
    """One settled call's real amount on one counter, flushed in a batch by `CounterStore.lease`."""

    event_id: str | None
    key: str
    #: added to the counter's spent
    amount: int
    #: the part the ledger will show (the rest is kept beside it: an unpriced call's worst case)
    shown: int


@dataclass(slots=True)
class LeaseResult:
    """What `CounterStore.lease` did: the grow refused (or not), what the lease holds now, the counters."""

    refusal: Refusal | None
    #: amount the lease reservation holds per counter after the step
    held: dict[str, int]
    #: (spent, reserved) of every counter the step touched or checked
    totals: dict[str, tuple[int, int]]
    #: events of the spends that the ledger already holds (their counters need a reconcile)
    ledgered: bool = False


@dataclass(frozen=True, slots=True)
class Reconciled:
    """One counter after `reconcile`: its spent before and after, and what the new value is made of."""

    before: int
    after: int
    #: the ledger's spend for the counter's window (what `llmbudget costs` says)
    ledger: int
    #: settled by the gate, not in the ledger yet
    unledgered: int
    #: kept beside the ledger: the reserved worst case of calls the ledger holds unpriced
    kept: int

    @property
    def drift(self) -> int:
        """How far the counter was from the ledger (+ pending) before: negative when it was short."""
        return self.before - self.after


class CounterStore(ABC):
    """Atomic budget counters. Every method is safe to call from many threads."""

    #: this process's owner id ("host:pid:token"); reservation ids start with it and a "/"
    owner: str = ""
    _lease: threading.Thread | None = None

    def _init_owner(self) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = _proc_start(self.pid) or ""
        self.owner = f"{self.host}:{self.pid}:{secrets.token_hex(4)}"
        self._lease = None
        self._lease_stop = threading.Event()
        self._lease_lock = threading.Lock()

    def reservation_id(self, unique: str) -> str:
        """A reservation id carrying this process's owner id (released if this process dies)."""
        return f"{self.owner}/{unique}"

    def _hold_lease(self) -> None:
        """Register this process as an owner and keep its heartbeat, from its first reservation on."""
        if self._lease is not None:
            return
        with self._lease_lock:
            if self._lease is not None:
                return
            self._beat(time.time())
            t = threading.Thread(target=self._lease_loop, daemon=True, name="llmbudget-lease")
            t.start()
            self._lease = t

    def _lease_loop(self) -> None:
        while not self._lease_stop.wait(BEAT_S):
            try:
                self._beat(time.time())
                self.reap()
            except Exception as e:  # the store is briefly unavailable: the next beat tries again
                log.warning("budget lease_failed error=%s: %s", type(e).__name__, e)

    def reap(self, now: float | None = None) -> int:
        """Release the reservations of owners that are dead (stale heartbeat, or gone from this host)."""
        now = time.time() if now is None else now
        released = 0
        for owner, host, pid, started, beat in self._owners():
            if owner == self.owner:
                continue
            if beat < now - OWNER_STALE_S or (host == self.host and not _alive(int(pid), str(started or ""))):
                n = self._release_owner(owner)
                if n:
                    log.info("budget released_dead_owner owner=%s reservations=%d", owner, n)
                released += n
        return released

    def _stop_lease(self) -> None:
        """A clean exit: stop the heartbeat and release what this process still holds."""
        if self._lease is None:
            return
        self._lease_stop.set()
        self._lease.join(timeout=5)
        self._lease = None
        try:
            self._release_owner(self.owner)
        except Exception as e:  # closing anyway; others release them when the heartbeat is stale
            log.warning("budget lease_release_failed error=%s: %s", type(e).__name__, e)

    @abstractmethod
    def _beat(self, now: float) -> None:
        """Register or refresh this owner's heartbeat."""

    @abstractmethod
    def _owners(self) -> list[tuple[str, str, int, str, float]]:
        """Every registered owner: (owner, host, pid, process start time, last heartbeat)."""

    @abstractmethod
    def _release_owner(self, owner: str) -> int:
        """Release every reservation of `owner` and forget it; returns how many."""

    @abstractmethod
    def reserve(
        self, rid: str, charges: Sequence[Charge], ttl_s: float, seeds: Mapping[str, SeedSpec] | None = None
    ) -> Refusal | None:
        """Book every charge or none; returns the first that would cross its limit.

        `seeds`: counters that may not exist yet; any that does not is created, in the same atomic
        step, with the spend the ledger holds for it (`llmbudget.budget.seed`).
        """

    @abstractmethod
    def ensure(self, seeds: Mapping[str, SeedSpec]) -> None:
        """Create each missing counter of `seeds`, seeded from the ledger (existing ones are untouched)."""

    def ledger_values(self, column: str, start_us: int, end_us: int) -> list[str]:
        """Values of a ledger column with spend in a time range (budget status of per-value budgets)."""
        return []

    @abstractmethod
    def settle(
        self,
        rid: str,
        actual: Sequence[tuple[str, int]],
        event_id: str | None = None,
        ledgered: Sequence[tuple[str, int]] | None = None,
    ) -> bool:
        """Replace the reservation `rid` by the real amounts [(counter key, amount)].

        With `event_id`, each amount is remembered as pending until that event is in the ledger;
        `ledgered` [(key, amount)] is the part the ledger will show (the rest is kept: an unpriced
        call's worst case). True when the ledger already holds the event: the caller then
        reconciles those counters, which may count it twice until then.
        """

    @abstractmethod
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
        """One atomic step on a process's lease (a reservation whose amounts change over time).

        In order: each spend is added to its counter's spent and taken out of what the lease holds
        for that counter (at most what it holds); `give_back` returns unused amounts; then every
        `grow` charge is checked against its limit (spent + reserved + amount) and, when all fit,
        added to the lease, else none is and the first that does not fit is returned. `calls`
        records how many calls in flight the lease covers per counter (refusals name them).
        """

    @abstractmethod
    def inflight(self, keys: Sequence[str]) -> int:
        """How many calls in flight hold reservations on any of `keys` (leases count their calls)."""

    @abstractmethod
    def reconcile(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        """Set each counter's spent to the ledger's spend for it plus its pending settlements."""

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


def _guard(method: Any) -> Any:
    """Turn a store's driver errors (server down, connection lost) into one clear `DatabaseUnreachable`."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StorageError:
            raise
        except self._driver_errors as e:
            from ..config import mask_url
            from ..errors import DatabaseUnreachable

            raise DatabaseUnreachable(
                f"budget counters at {mask_url(self.url)} are unavailable ({type(e).__name__}: {e}). Check that "
                "the server is running and the URL (budgets.redis_url or --db) is right; the proxy refuses "
                "budgeted calls with a 503 until it answers."
            ) from e

    return wrapper


def _guard_all(cls: Any) -> Any:
    for name in (
        "reserve",
        "ensure",
        "ledger_values",
        "settle",
        "lease",
        "inflight",
        "reconcile",
        "release",
        "totals",
        "scan",
        "claim_once",
        "sweep",
    ):
        setattr(cls, name, _guard(cls.__dict__[name]))
    return cls


def _check(charges: Sequence[Charge], used: dict[str, tuple[int, int]]) -> Refusal | None:
    for c in charges:
        if c.limit is None:
            continue
        spent = sum(used.get(k, (0, 0))[0] for k in c.read_keys)
        reserved = sum(used.get(k, (0, 0))[1] for k in c.read_keys)
        if spent + reserved + c.amount > c.limit:
            return Refusal(c.budget, spent, reserved, c.limit, c.amount)
    return None


#: pending rows the ledger now holds are counted from the ledger: dropped for every counter, live or
#: past (those that keep an unpriced call's worst case stay until the event is priced); and any
#: row older than KEEP_S
_PRUNE_PENDING_SQL = (
    "DELETE FROM budget_pending WHERE settled_at < ? OR event_id IN "
    "(SELECT id FROM events WHERE cost_nano IS NOT NULL OR budget_pending.kept = 0)"
)
_PRUNE_OLD_SQL = "DELETE FROM budget_pending WHERE settled_at < ?"


def _merge(pairs: Sequence[tuple[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for key, amount in pairs:
        merged[key] = merged.get(key, 0) + int(amount)
    return merged


def _all_keys(charges: Sequence[Charge]) -> list[str]:
    return sorted({k for c in charges for k in c.read_keys} | {c.key for c in charges})


def _items(charges: Sequence[Charge]) -> list[list[Any]]:
    merged: dict[str, int] = {}
    for c in charges:
        merged[c.key] = merged.get(c.key, 0) + c.amount
    return [[k, v] for k, v in sorted(merged.items())]


def _lease_plan(
    held: dict[str, list[int]],
    spends: Sequence[Spend],
    give_back: Mapping[str, int] | None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Apply spends and give-backs to a lease's `held` {key: [amount, calls]} in place.

    Returns the per-counter deltas (spent, reserved) to write.
    """
    d_spent: dict[str, int] = {}
    d_res: dict[str, int] = {}
    for sp in spends:
        d_spent[sp.key] = d_spent.get(sp.key, 0) + int(sp.amount)
        h = held.get(sp.key)
        if h is not None and sp.amount > 0:
            take = min(h[0], int(sp.amount))
            h[0] -= take
            d_res[sp.key] = d_res.get(sp.key, 0) - take
    for key, amount in (give_back or {}).items():
        h = held.get(key)
        if h is not None and amount > 0:
            g = min(h[0], int(amount))
            h[0] -= g
            d_res[key] = d_res.get(key, 0) - g
    return d_spent, d_res


def _lease_items(held: dict[str, list[int]], calls: Mapping[str, int] | None) -> list[list[Any]]:
    for key, n in (calls or {}).items():
        held.setdefault(key, [0, 0])[1] = int(n)
    return [[k, v[0], v[1]] for k, v in sorted(held.items()) if v[0] > 0 or v[1] > 0]


def _pending_rows(spends: Sequence[Spend]) -> dict[tuple[str, str], tuple[int, int]]:
    rows: dict[tuple[str, str], tuple[int, int]] = {}
    for sp in spends:
        if sp.event_id is None:
            continue
        part = min(int(sp.amount), int(sp.shown))
        a, k = rows.get((sp.event_id, sp.key), (0, 0))
        rows[(sp.event_id, sp.key)] = (a + part, k + int(sp.amount) - part)
    return rows


def _lease_keys(
    spends: Sequence[Spend], grow: Sequence[Charge], give_back: Mapping[str, int] | None
) -> list[str]:
    return sorted({sp.key for sp in spends} | set(_all_keys(grow)) | set(give_back or {}))


def _count_calls(all_items: Sequence[str], keys: Sequence[str]) -> int:
    """Calls in flight on `keys` across reservations (a plain reservation is one call, a lease says how many)."""
    wanted = set(keys)
    n = 0
    for items in all_items:
        best = 0
        for key, amount, *calls in json.loads(items):
            if key in wanted and (amount or (calls and calls[0])):
                best = max(best, int(calls[0]) if calls else 1)
        n += best
    return n


# ---------------------------------------------------------------------------------------------- SQLite

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


# ---------------------------------------------------------------------------------------------- PostgreSQL

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

_LUA_SEED = """
-- counters that do not exist yet start from the ledger's spend (read just before by the caller);
-- one that exists is never re-seeded
for _, it in ipairs(cjson.decode(ARGV[7])) do
  local ck = p .. 'c:' .. it[1]
  if redis.call('EXISTS', ck) == 0 then
    redis.call('HSET', ck, 's', n(it[2]), 'r', 0)
    redis.call('EXPIRE', ck, 3456000)
  end
end
"""

_LUA_ENSURE = (
    """
local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
"""
    + _LUA_SEED
    + "return 1\n"
)

_LUA_RESERVE = (
    _LUA_SWEEP.replace("sweep()\nreturn 1\n", "sweep()\n")
    + _LUA_SEED
    + """local charges = cjson.decode(ARGV[4])
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
local owner = string.match(ARGV[2], '^(.*)/')
if owner then
  redis.call('SADD', p .. 'own:' .. owner, ARGV[2])
  redis.call('EXPIRE', p .. 'own:' .. owner, 3456000)
end
return {0, 0, 0}
"""
)

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
  local owner = string.match(ARGV[2], '^(.*)/')
  if owner then redis.call('SREM', p .. 'own:' .. owner, ARGV[2]) end
end
for _, it in ipairs(cjson.decode(ARGV[3])) do
  local ck = p .. 'c:' .. it[1]
  redis.call('HINCRBY', ck, 's', n(it[2]))
  redis.call('EXPIRE', ck, 3456000)
end
-- pending until the event is in the ledger: "amount the ledger will show:amount kept beside it"
if ARGV[4] and ARGV[4] ~= '' then
  for _, it in ipairs(cjson.decode(ARGV[5])) do
    local pk = p .. 'p:' .. it[1]
    redis.call('HSET', pk, ARGV[4], n(it[2]) .. ':' .. n(it[3]))
    redis.call('EXPIRE', pk, 3456000)
  end
end
return 1
"""

_LUA_LEASE = (
    _LUA_SWEEP.replace("sweep()\nreturn 1\n", "sweep()\n")
    + _LUA_SEED
    + """-- ARGV[2] lease id, ARGV[4] grow charges, ARGV[5] grow items, ARGV[6] ttl, ARGV[8] spends
-- [[key, amount, event, shown]], ARGV[9] give back {key: amount}, ARGV[10] calls {key: n}, ARGV[11] keys
local rk = p .. 'r:' .. ARGV[2]
local held = {}
local raw = redis.call('GET', rk)
if raw then
  for _, it in ipairs(cjson.decode(raw)) do held[it[1]] = {it[2], it[3] or 0} end
end
local function take(key, amount)
  local h = held[key]
  if h and amount > 0 then
    local t = math.min(h[1], amount)
    h[1] = h[1] - t
    if t > 0 then
      local r = redis.call('HINCRBY', p .. 'c:' .. key, 'r', n(-t))
      if r < 0 then redis.call('HSET', p .. 'c:' .. key, 'r', 0) end
    end
  end
end
for _, sp in ipairs(cjson.decode(ARGV[8])) do
  local ck = p .. 'c:' .. sp[1]
  redis.call('HINCRBY', ck, 's', n(sp[2]))
  redis.call('EXPIRE', ck, 3456000)
  take(sp[1], sp[2])
  if sp[3] ~= '' then
    local pk = p .. 'p:' .. sp[1]
    local part = math.min(sp[2], sp[4])
    local old = redis.call('HGET', pk, sp[3])
    local a, k = 0, 0
    if old then
      local sep = string.find(old, ':', 1, true)
      a, k = tonumber(string.sub(old, 1, sep - 1)), tonumber(string.sub(old, sep + 1))
    end
    redis.call('HSET', pk, sp[3], n(a + part) .. ':' .. n(k + sp[2] - part))
    redis.call('EXPIRE', pk, 3456000)
  end
end
for key, amount in pairs(cjson.decode(ARGV[9])) do take(key, amount) end
local refusal = {0, 0, 0}
local charges = cjson.decode(ARGV[4])
for i, c in ipairs(charges) do
  if c.l >= 0 then
    local s, r = 0, 0
    for _, k in ipairs(c.r) do
      local v = redis.call('HMGET', p .. 'c:' .. k, 's', 'r')
      s = s + (tonumber(v[1]) or 0)
      r = r + (tonumber(v[2]) or 0)
    end
    if s + r + c.a > c.l then
      refusal = {i, s, r}
      break
    end
  end
end
if refusal[1] == 0 then
  for _, it in ipairs(cjson.decode(ARGV[5])) do
    local ck = p .. 'c:' .. it[1]
    redis.call('HINCRBY', ck, 'r', n(it[2]))
    redis.call('EXPIRE', ck, 3456000)
    if not held[it[1]] then held[it[1]] = {0, 0} end
    held[it[1]][1] = held[it[1]][1] + it[2]
  end
end
for key, cnt in pairs(cjson.decode(ARGV[10])) do
  if not held[key] then held[key] = {0, 0} end
  held[key][2] = cnt
end
local items = {}
local names = {}
for key, _ in pairs(held) do table.insert(names, key) end
table.sort(names)
for _, key in ipairs(names) do
  local h = held[key]
  if h[1] > 0 or h[2] > 0 then table.insert(items, {key, h[1], h[2]}) end
end
local out_held = {}
for _, key in ipairs(names) do table.insert(out_held, {key, n(held[key][1])}) end
if #items > 0 then
  redis.call('SET', rk, cjson.encode(items))
  redis.call('ZADD', p .. 'rexp', now + tonumber(ARGV[6]), ARGV[2])
  local owner = string.match(ARGV[2], '^(.*)/')
  if owner then
    redis.call('SADD', p .. 'own:' .. owner, ARGV[2])
    redis.call('EXPIRE', p .. 'own:' .. owner, 3456000)
  end
elseif raw then
  redis.call('DEL', rk)
  redis.call('ZREM', p .. 'rexp', ARGV[2])
end
local totals = {}
for _, key in ipairs(cjson.decode(ARGV[11])) do
  local v = redis.call('HMGET', p .. 'c:' .. key, 's', 'r')
  table.insert(totals, {key, v[1] or '', v[2] or ''})
end
return {refusal, out_held, totals}
"""
)

_LUA_INFLIGHT = """
local p = ARGV[1]
local ids = redis.call('ZRANGE', p .. 'rexp', 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local items = redis.call('GET', p .. 'r:' .. id)
  if items then table.insert(out, items) end
end
return out
"""

_LUA_RELEASE_OWNER = """
-- every reservation of a dead owner (ARGV[2]) released at once
local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
local ids = redis.call('SMEMBERS', p .. 'own:' .. ARGV[2])
local released = 0
for _, id in ipairs(ids) do
  local items = redis.call('GET', p .. 'r:' .. id)
  if items then
    for _, it in ipairs(cjson.decode(items)) do
      local ck = p .. 'c:' .. it[1]
      local r = redis.call('HINCRBY', ck, 'r', n(-it[2]))
      if r < 0 then redis.call('HSET', ck, 'r', 0) end
    end
    redis.call('DEL', p .. 'r:' .. id)
    released = released + 1
  end
  redis.call('ZREM', p .. 'rexp', id)
end
redis.call('DEL', p .. 'own:' .. ARGV[2])
redis.call('HDEL', p .. 'owners', ARGV[2])
return released
"""

_LUA_RECONCILE = """
-- ARGV[2]: [[counter, ledger spend, {ledgered ids: priced 1/0}], ...] read from the ledger just before
local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
local out = {}
for _, c in ipairs(cjson.decode(ARGV[2])) do
  local ck, pk, seen = p .. 'c:' .. c[1], p .. 'p:' .. c[1], c[3]
  local un, kept = 0, 0
  local rows = redis.call('HGETALL', pk)
  for i = 1, #rows, 2 do
    local id, v = rows[i], rows[i + 1]
    local sep = string.find(v, ':', 1, true)
    local a, k = tonumber(string.sub(v, 1, sep - 1)), tonumber(string.sub(v, sep + 1))
    local priced = seen[id]
    if priced == nil then
      un = un + a
      kept = kept + k
    elseif priced == 1 or k == 0 then
      redis.call('HDEL', pk, id)
    else
      kept = kept + k
      if a ~= 0 then redis.call('HSET', pk, id, '0:' .. n(k)) end
    end
  end
  local before = tonumber(redis.call('HGET', ck, 's') or '') or -1
  local after = c[2] + un + kept
  redis.call('HSET', ck, 's', n(after))
  if before < 0 then redis.call('HSET', ck, 'r', 0) end
  redis.call('EXPIRE', ck, 3456000)
  table.insert(out, {n(before), n(after), n(un), n(kept)})
end
return out
"""


@_guard_all
class RedisCounters(CounterStore):
    """Counters in Redis hashes; check-and-book is one Lua script, so it is atomic across replicas."""

    def __init__(self, url: str, *, prefix: str = "llmb:budget:", seeder: LedgerSeeder | None = None) -> None:
        try:
            import redis
        except ImportError as e:  # pragma: no cover - extra not installed
            raise StorageError("Redis budgets need `pip install 'llmbudget[redis]'`") from e
        self.url = url
        self.prefix = prefix
        self._driver_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._r = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, max_connections=64, health_check_interval=30
        )
        self._reserve = self._r.register_script(_LUA_RESERVE)
        self._settle = self._r.register_script(_LUA_SETTLE)
        self._sweep = self._r.register_script(_LUA_SWEEP)
        self._ensure = self._r.register_script(_LUA_ENSURE)
        self._reconcile = self._r.register_script(_LUA_RECONCILE)
        self._release_owner_script = self._r.register_script(_LUA_RELEASE_OWNER)
        self._lease_script = self._r.register_script(_LUA_LEASE)
        self._inflight_script = self._r.register_script(_LUA_INFLIGHT)
        self._init_owner()
        #: reads seeds from the ledger's database (None: counters start at 0)
        self.seeder = seeder
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        try:
            self.reap()  # a predecessor killed on this storage leaves nothing reserved
        except self._driver_errors as e:  # Redis not up yet: the first reservation says so clearly
            log.warning("budget reap_failed error=%s", type(e).__name__)

    def _beat(self, now: float) -> None:
        self._r.hset(self.prefix + "owners", self.owner, json.dumps([self.host, self.pid, self.started, now]))

    def _owners(self) -> list[tuple[str, str, int, str, float]]:
        out = []
        for k, v in self._r.hgetall(self.prefix + "owners").items():
            host, pid, started, beat = json.loads(v)
            out.append(
                (
                    k.decode() if isinstance(k, bytes) else str(k),
                    str(host),
                    int(pid),
                    str(started),
                    float(beat),
                )
            )
        return out

    def _release_owner(self, owner: str) -> int:
        return int(self._release_owner_script(args=[self.prefix, owner]))

    def _seed_args(self, seeds: Mapping[str, SeedSpec] | None) -> tuple[str, list[str]]:
        if not seeds:
            return "[]", []
        with self._known_lock:
            fresh = [k for k in sorted(seeds) if k not in self._known]
        if not fresh:
            return "[]", []
        amounts = (
            self.seeder.amounts({k: seeds[k] for k in fresh}) if self.seeder else dict.fromkeys(fresh, 0)
        )
        return json.dumps([[k, amounts[k]] for k in fresh]), fresh

    def _remember(self, keys: list[str]) -> None:
        if keys:
            with self._known_lock:
                if len(self._known) > 100_000:
                    self._known.clear()
                self._known.update(keys)

    def ensure(self, seeds: Mapping[str, SeedSpec]) -> None:
        arg, fresh = self._seed_args(seeds)
        if fresh:
            self._ensure(args=[self.prefix, "", 0, "", "", 0, arg])
            self._remember(fresh)

    def ledger_values(self, column: str, start_us: int, end_us: int) -> list[str]:
        return self.seeder.values(column, start_us, end_us) if self.seeder else []

    def reserve(
        self, rid: str, charges: Sequence[Charge], ttl_s: float, seeds: Mapping[str, SeedSpec] | None = None
    ) -> Refusal | None:
        spec = [
            {"r": list(c.read_keys), "l": -1 if c.limit is None else c.limit, "a": c.amount} for c in charges
        ]
        self._hold_lease()
        seed_arg, fresh = self._seed_args(seeds)
        res = self._reserve(
            args=[
                self.prefix,
                rid,
                time.time(),
                json.dumps(spec),
                json.dumps(_items(charges)),
                ttl_s,
                seed_arg,
            ]
        )
        self._remember(fresh)
        idx, spent, reserved = (int(x) for x in res)
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
        shown = dict(ledgered) if ledgered is not None else merged
        pending = [
            [k, min(a, int(shown.get(k, a))), a - min(a, int(shown.get(k, a)))] for k, a in merged.items()
        ]
        self._settle(
            args=[
                self.prefix,
                rid,
                json.dumps([[k, int(v)] for k, v in actual]),
                event_id or "",
                json.dumps(pending),
            ]
        )
        if event_id is None or self.seeder is None:
            return False
        try:
            return event_id in self.seeder.ledgered([event_id])
        except (
            Exception
        ) as e:  # the ledger unreachable: the pending entry holds; the next reconcile settles it
            log.warning("budget ledger_check_failed error=%s", type(e).__name__)
            return False

    def reconcile(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        keys = sorted(seeds)
        if not keys:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.hkeys(self.prefix + "p:" + k)
        ids = sorted({(i.decode() if isinstance(i, bytes) else i) for got in pipe.execute() for i in got})
        # the ledger first, then one script: a settlement landing in between can only count twice
        # (never be missed), and its own settle() reconciles again when the ledger holds its event
        seen = self.seeder.ledgered(ids) if self.seeder else {}
        amounts = self.seeder.amounts({k: seeds[k] for k in keys}) if self.seeder else dict.fromkeys(keys, 0)
        arg = [[k, amounts[k], {i: int(seen[i]) for i in ids if i in seen}] for k in keys]
        res = self._reconcile(args=[self.prefix, json.dumps(arg)])
        out: dict[str, Reconciled] = {}
        for k, (before, after, un, kept) in zip(keys, res, strict=True):
            b, a = int(before), int(after)
            out[k] = Reconciled(a if b < 0 else b, a, amounts[k], int(un), int(kept))
        self._remember(keys)
        return out

    def release(self, rid: str) -> None:
        self._settle(args=[self.prefix, rid, "[]"])

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
        seed_arg, fresh = self._seed_args(seeds)
        keys = _lease_keys(spends, grow, give_back)
        spec = [
            {"r": list(c.read_keys), "l": -1 if c.limit is None else c.limit, "a": c.amount} for c in grow
        ]
        res = self._lease_script(
            args=[
                self.prefix,
                rid,
                time.time(),
                json.dumps(spec),
                json.dumps(_items(grow)),
                ttl_s,
                seed_arg,
                json.dumps([[sp.key, int(sp.amount), sp.event_id or "", int(sp.shown)] for sp in spends]),
                json.dumps(dict(give_back or {})) if give_back else "{}",
                json.dumps(dict(calls or {})) if calls else "{}",
                json.dumps(keys),
            ]
        )
        self._remember(fresh)
        (idx, spent, reserved), held_rows, total_rows = res
        refusal = None
        if int(idx):
            c = grow[int(idx) - 1]
            refusal = Refusal(c.budget, int(spent), int(reserved), int(c.limit or 0), c.amount)
        held = {_text(k): int(v) for k, v in held_rows}
        totals = {_text(k): (int(s or 0), int(r or 0)) for k, s, r in total_rows if s or r}
        ledgered = False
        ids = sorted({sp.event_id for sp in spends if sp.event_id})
        if ids and self.seeder is not None:
            try:
                ledgered = bool(self.seeder.ledgered(ids))
            except (
                Exception
            ) as e:  # the ledger unreachable: pending entries hold; the next reconcile settles them
                log.warning("budget ledger_check_failed error=%s", type(e).__name__)
        return LeaseResult(refusal, held, totals, ledgered)

    def inflight(self, keys: Sequence[str]) -> int:
        rows = self._inflight_script(args=[self.prefix])
        return _count_calls([r.decode() if isinstance(r, bytes) else r for r in rows], keys)

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
        keys = [
            k.decode() if isinstance(k, bytes) else k for k in self._r.scan_iter(match=pattern, count=500)
        ]
        return self.totals([k[len(self.prefix) + 2 :] for k in keys])

    def claim_once(self, key: str) -> bool:
        return bool(self._r.set(self.prefix + "claim:" + key, "1", nx=True, ex=3600 * 24 * 400))

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        due = int(self._r.zcount(self.prefix + "rexp", "-inf", now))
        self._sweep(args=[self.prefix, "", now])
        return due

    def close(self) -> None:
        self._stop_lease()
        self._r.close()
        if self.seeder is not None:
            self.seeder.close()


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


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
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SQLiteCounters(path)
