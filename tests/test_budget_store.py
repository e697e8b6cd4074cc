"""Budget counters hold under concurrency: real SQLite file, PostgreSQL and Redis, two OS processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from llmbudget.budget.counters import Charge, CounterStore, PostgresCounters, RedisCounters, SQLiteCounters

WORKER = Path(__file__).with_name("budget_worker.py")


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    prefix = f"llmbtest:{uuid.uuid4().hex[:8]}:"
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "ledger.db"), prefix
    if request.param == "postgres":
        return "postgres", str(request.getfixturevalue("pg_url")), prefix
    return "redis", str(request.getfixturevalue("redis_url")), prefix


def _open(spec: tuple[str, str, str]) -> CounterStore:
    kind, url, prefix = spec
    if kind == "sqlite":
        return SQLiteCounters(url)
    if kind == "postgres":
        return PostgresCounters(url)
    return RedisCounters(url, prefix=prefix)


def _cleanup(store: CounterStore, spec: tuple[str, str, str]) -> None:
    if spec[0] == "redis":
        assert isinstance(store, RedisCounters)
        for k in store._r.scan_iter(match=spec[2] + "*"):
            store._r.delete(k)
    store.close()


def test_two_processes_200_reservations_never_exceed_limit(store_spec: tuple[str, str, str]) -> None:
    store = _open(store_spec)  # creates the schema before the workers race
    limit, amount = 1_000, 10  # room for exactly 100 of the 200 calls
    start_at = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *store_spec, "10", "100", str(limit), str(amount), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    try:
        ok = sum(o["ok"] for o in outs)
        refused = sum(o["refused"] for o in outs)
        assert ok + refused == 200
        assert ok == limit // amount  # neither over- nor under-admitted
        assert all(not o["bad"] for o in outs), outs  # every refusal names the budget and a full counter
        key = "daily|*|day:2025-01-01"
        spent, reserved = store.totals([key])[key]
        assert spent == ok * amount <= limit
        assert reserved == 0
    finally:
        _cleanup(store, store_spec)


def test_reserve_settle_release_and_all_or_nothing(store_spec: tuple[str, str, str]) -> None:
    store = _open(store_spec)
    try:
        a, b = "daily|*|day:2025-01-01", "backend:x/month|x|month:2025-01"
        both = [Charge("daily", a, (a,), 100, 60), Charge("backend:x/month", b, (b,), 50, 60)]
        # the second budget does not fit: nothing is booked on the first either
        r = store.reserve("r1", both, 60)
        assert r is not None and r.budget == "backend:x/month" and r.limit == 50
        assert store.totals([a, b]) in ({}, {a: (0, 0), b: (0, 0)}, {b: (0, 0)})
        assert store.reserve("r2", [Charge("daily", a, (a,), 100, 60)], 60) is None
        assert store.totals([a])[a] == (0, 60)
        # a concurrent call needing 60 more does not fit while r2 is in flight
        assert store.reserve("r3", [Charge("daily", a, (a,), 100, 60)], 60) is not None
        store.settle("r2", [(a, 25)])  # real cost below the worst case frees the rest
        assert store.totals([a])[a] == (25, 0)
        assert store.reserve("r4", [Charge("daily", a, (a,), 100, 60)], 60) is None
        store.release("r4")
        assert store.totals([a])[a] == (25, 0)
        store.release("r4")  # twice is harmless
        assert store.totals([a])[a] == (25, 0)
        # a count-only charge (limit None) is never refused
        assert store.reserve("r5", [Charge("daily", a, (a,), None, 10_000)], 60) is None
        assert store.scan("daily|") == {a: (25, 10_000)}
    finally:
        _cleanup(store, store_spec)


def test_rolling_window_sums_every_bucket(store_spec: tuple[str, str, str]) -> None:
    store = _open(store_spec)
    try:
        old, new = "r|*|5h:1000", "r|*|5h:4600"
        assert store.reserve("a", [Charge("r", old, (old,), 100, 70)], 60) is None
        store.settle("a", [(old, 70)])
        refusal = store.reserve("b", [Charge("r", new, (old, new), 100, 40)], 60)
        assert refusal is not None and refusal.spent == 70
        # once the old bucket leaves the window the call fits
        assert store.reserve("c", [Charge("r", new, (new,), 100, 40)], 60) is None
    finally:
        _cleanup(store, store_spec)


def test_expired_reservations_of_a_crashed_process_are_swept(store_spec: tuple[str, str, str]) -> None:
    store = _open(store_spec)
    try:
        k = "daily|*|day:2025-01-01"
        assert store.reserve("crashed", [Charge("daily", k, (k,), 100, 90)], 10) is None
        assert store.reserve("x", [Charge("daily", k, (k,), 100, 20)], 10) is not None
        assert store.sweep(now=time.time() + 11) == 1
        assert store.totals([k])[k] == (0, 0)
        assert store.reserve("x", [Charge("daily", k, (k,), 100, 20)], 10) is None
        store.settle("crashed", [(k, 5)])  # a late settle still records the real spend
        assert store.totals([k])[k] == (5, 20)
    finally:
        _cleanup(store, store_spec)


def test_claim_once_is_shared_between_store_instances(store_spec: tuple[str, str, str]) -> None:
    s1, s2 = _open(store_spec), _open(store_spec)
    try:
        assert s1.claim_once("warn|daily|0.8") is True
        assert s2.claim_once("warn|daily|0.8") is False
        assert s2.claim_once("warn|daily|0.9") is True
    finally:
        if store_spec[0] == "redis":
            assert isinstance(s1, RedisCounters)
            for k in s1._r.scan_iter(match=store_spec[2] + "*"):
                s1._r.delete(k)
        s1.close()
        s2.close()


def test_sqlite_counters_share_the_ledger_file(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "l.db"
    SQLiteCounters(str(path)).close()
    names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"budget_counters", "budget_reservations", "budget_claims"} <= names


def test_postgres_store_two_instances_start_together(pg_url: str) -> None:
    import threading

    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresCounters(pg_url).close()
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=start) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def test_unreachable_redis_is_one_clear_error() -> None:
    from llmbudget.errors import DatabaseUnreachable

    store = RedisCounters("redis://127.0.0.1:1/0", prefix="llmbtest:down:")
    key = "daily|*|day:2025-01-01"
    with pytest.raises(DatabaseUnreachable) as info:
        store.reserve("r1", [Charge("daily", key, (key,), 10, 1)], 60)
    assert "redis://127.0.0.1:1/0" in str(info.value) and "budgets.redis_url" in str(info.value)
    store.close()


_HOLDER = """
import sys, time
from llmbudget.budget.counters import Charge, PostgresCounters, RedisCounters, SQLiteCounters
kind, url, prefix = sys.argv[1:4]
store = {"sqlite": lambda: SQLiteCounters(url), "postgres": lambda: PostgresCounters(url),
         "redis": lambda: RedisCounters(url, prefix=prefix)}[kind]()
key = "daily|*|day:2025-01-02"
for i in range(3):
    assert store.reserve(store.reservation_id(f"held{i}"), [Charge("daily", key, (key,), 100, 30)], 3600) is None
print("held", flush=True)
time.sleep(600)
"""


def test_reservations_of_a_killed_process_are_released_by_its_successor(
    store_spec: tuple[str, str, str],
) -> None:
    key = "daily|*|day:2025-01-02"
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, *store_spec], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        watcher = _open(store_spec)
        try:
            assert watcher.reap() == 0  # alive, heartbeating: nothing is taken from it
            assert watcher.totals([key])[key] == (0, 90)
            # the limit is full of a live process's reservations: refused
            assert watcher.reserve(watcher.reservation_id("x"), [Charge("daily", key, (key,), 100, 30)], 60)
        finally:
            watcher.close()
        p.kill()  # SIGKILL: nothing settles or releases
        p.wait(10)
        successor = _open(store_spec)  # same storage, same host: the dead owner is noticed at start
        try:
            assert successor.totals([key])[key] == (0, 0)
            assert (
                successor.reserve(successor.reservation_id("y"), [Charge("daily", key, (key,), 100, 90)], 60)
                is None
            )
        finally:
            _cleanup(successor, store_spec)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        if p.stdout is not None:
            p.stdout.close()


def test_an_owner_on_another_host_is_released_when_its_heartbeat_is_stale(
    store_spec: tuple[str, str, str],
) -> None:
    from llmbudget.budget import counters as store_mod

    key = "daily|*|day:2025-01-03"
    remote, local = _open(store_spec), _open(store_spec)
    try:
        remote.host = "another-machine"  # a replica elsewhere: its pid means nothing here
        remote.owner = f"another-machine:1:{uuid.uuid4().hex[:8]}"
        assert (
            remote.reserve(remote.reservation_id("r"), [Charge("daily", key, (key,), 100, 40)], 3600) is None
        )
        remote._lease_stop.set()  # its heartbeats stop, as when the machine dies
        assert local.reap() == 0  # the heartbeat is fresh
        assert local.reap(now=time.time() + store_mod.OWNER_STALE_S + store_mod.BEAT_S + 1) == 1
        assert local.totals([key])[key] == (0, 0)
    finally:
        remote.close()
        _cleanup(local, store_spec)


def test_a_lease_step_spends_gives_back_and_grows_in_one_atomic_step(
    store_spec: tuple[str, str, str],
) -> None:
    """The same lease steps give the same answers on SQLite, PostgreSQL and Redis."""
    from llmbudget.budget.counters import Spend
    from llmbudget.budget.seed import SeedSpec

    store = _open(store_spec)
    key, team = "daily|*|day:2025-02-01", "team|a|day:2025-02-01"
    rid = store.reservation_id("lease")
    try:
        first = store.lease(
            rid,
            grow=[Charge("daily", key, (key,), 100, 60), Charge("team", team, (team,), None, 60)],
            calls={key: 2},
        )
        assert first.refusal is None and first.held == {key: 60, team: 60}
        assert first.totals[key] == (0, 60)
        assert store.inflight([key]) == 2  # the lease says how many calls it covers
        # 25 spent (the ledger will show 20 of it), 10 given back, then 50 more asked: 25 + 35 + 50 > 100
        second = store.lease(
            rid,
            spends=[Spend("e1", key, 25, 20)],
            give_back={team: 10},
            grow=[Charge("daily", key, (key,), 100, 50)],
        )
        assert second.refusal is not None
        assert (second.refusal.spent, second.refusal.reserved, second.refusal.limit) == (25, 35, 100)
        assert second.held == {key: 35, team: 50} and second.totals[key] == (25, 35)
        assert not second.ledgered
        third = store.lease(rid, grow=[Charge("daily", key, (key,), 100, 40)])  # exactly to the limit
        assert third.refusal is None and third.held[key] == 75 and third.totals[key] == (25, 75)
        last = store.lease(rid, give_back={key: 75, team: 50}, calls={key: 0})
        assert last.held == {key: 0, team: 0}
        assert store.totals([key, team]) == {key: (25, 0), team: (0, 0)}
        assert store.inflight([key]) == 0
        # the spend is pending until its event reaches the ledger: 20 the ledger will show, 5 kept beside
        rec = store.reconcile({key: SeedSpec("usd", 0, 1)})[key]
        assert (rec.before, rec.after, rec.ledger, rec.unledgered, rec.kept) == (25, 25, 0, 20, 5)
    finally:
        _cleanup(store, store_spec)


def test_a_large_batch_of_settlements_is_pending_whole_and_exact(store_spec: tuple[str, str, str]) -> None:
    """341 settlements in one lease step (every statement size SQLite writes them with: 256, 64, 16,
    4, 1), then the same events again: each event's amounts add up, none is lost or doubled."""
    from llmbudget.budget.counters import Spend
    from llmbudget.budget.seed import SeedSpec

    store = _open(store_spec)
    key = "daily|*|day:2025-03-01"
    rid = store.reservation_id("batch")
    n = 341
    try:
        spends = [Spend(f"e{i}", key, i + 1, i) for i in range(n)]  # one kept beside each
        store.lease(rid, spends=spends)
        store.lease(rid, spends=[Spend("e0", key, 5, 5), Spend(f"e{n - 1}", key, 2, 2)])
        total = sum(range(1, n + 1)) + 7
        assert store.totals([key])[key] == (total, 0)
        rec = store.reconcile({key: SeedSpec("usd", 0, 1)})[key]
        # nothing is in a ledger yet: every amount is pending, shown or kept beside
        assert (rec.before, rec.after, rec.ledger) == (total, total, 0)
        assert (rec.unledgered, rec.kept) == (sum(range(n)) + 7, n)
    finally:
        _cleanup(store, store_spec)
