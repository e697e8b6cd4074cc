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

import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, SupportsInt, TypeVar

from ...config import mask_url
from ...errors import DatabaseUnreachable, StorageError
from ..seed import SeedSpec

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
    #: set by the back-ends whose methods `_guard_all` wraps: where they are, what their driver raises
    url: str
    _driver_errors: tuple[type[BaseException], ...]

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
    def check(self, seeds: Mapping[str, SeedSpec]) -> dict[str, Reconciled]:
        """What `reconcile` would find, without writing anything (pages looked at every few seconds).

        `before` is the counter's spent now (the ledger's figure for a counter not created yet),
        `after` what a reconciliation would set it to; their difference is the drift right now.
        """

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


_Store = TypeVar("_Store", bound=CounterStore)
_P = ParamSpec("_P")
_R = TypeVar("_R")
#: what a driver gives back for a number (an int, a numeric string, Redis' bytes)
_Num = SupportsInt | str | bytes


def _guard(method: Callable[Concatenate[_Store, _P], _R]) -> Callable[Concatenate[_Store, _P], _R]:
    """Turn a store's driver errors (server down, connection lost) into one clear `DatabaseUnreachable`."""

    @functools.wraps(method)
    def wrapper(self: _Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except StorageError:
            raise
        except self._driver_errors as e:
            raise DatabaseUnreachable(
                f"budget counters at {mask_url(self.url)} are unavailable ({type(e).__name__}: {e}). Check that "
                "the server is running and the URL (budgets.redis_url or --db) is right; the proxy refuses "
                "budgeted calls with a 503 until it answers."
            ) from e

    return wrapper


def _guard_all(cls: type[_Store]) -> type[_Store]:
    for name in (
        "reserve",
        "ensure",
        "ledger_values",
        "settle",
        "lease",
        "inflight",
        "reconcile",
        "check",
        "release",
        "totals",
        "scan",
        "claim_once",
        "sweep",
    ):
        setattr(cls, name, _guard(getattr(cls, name)))
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


#: the ledger holds the pending row's event, and the row has nothing more to say: its amount counts
#: from the ledger, and so does the worst case it keeps (an unpriced call's) once the event is priced.
#: One index lookup per pending row (an `IN (SELECT id FROM events)` walks every event id on SQLite,
#: a second per counter at a million events)
_DONE = (
    "EXISTS (SELECT 1 FROM events e WHERE e.id = budget_pending.event_id "
    "AND (e.cost_nano IS NOT NULL OR budget_pending.kept = 0))"
)
#: pending rows that are done are dropped for every counter, live or past; and any row older than KEEP_S
_PRUNE_PENDING_SQL = f"DELETE FROM budget_pending WHERE settled_at < ? OR {_DONE}"
_PRUNE_OLD_SQL = "DELETE FROM budget_pending WHERE settled_at < ?"


def _refusal_at(charges: Sequence[Charge], answer: Sequence[_Num]) -> Refusal | None:
    """A store's (index, spent, reserved) answer as a Refusal: index 0 is none refused, else the 1-based charge."""
    idx, spent, reserved = (int(x) for x in answer)
    if idx == 0:
        return None
    c = charges[idx - 1]
    return Refusal(c.budget, spent, reserved, int(c.limit or 0), c.amount)


def _checked(spent: _Num, un: _Num, kept: _Num, before: _Num | None) -> Reconciled:
    """A `check` result: the ledger's part, pending, kept, and the counter's spent (None: no counter yet)."""
    after = int(spent) + int(un) + int(kept)
    return Reconciled(after if before is None else int(before), after, int(spent), int(un), int(kept))


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
