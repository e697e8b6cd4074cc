"""Counters follow the ledger: imports, reprices and ungated calls after a counter exists are counted,
settled calls are counted once whichever of the gate and the ledger writer comes first, and a
counter that cannot be read fails closed. Real SQLite, PostgreSQL and Redis counters.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from test_budget_schema import _sql
from test_budget_seed import NOW, Clock, _cleanup, call, enforcer, ev

from llmbudget.budget.status import budget_status
from llmbudget.errors import BudgetUnavailable
from llmbudget.money import to_nano
from llmbudget.store import open_ledger


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url")), None
    redis = str(request.getfixturevalue("redis_url")) if request.param == "redis" else None
    return f"sqlite:///{tmp_path / 'l.db'}", redis


def _ledger_today(ledger: object) -> int:
    rows = ledger.costs(since=NOW.replace(hour=0, minute=0), until=NOW + timedelta(days=1))  # type: ignore[attr-defined]
    return sum(r.cost_nano or 0 for r in rows)


def test_import_and_reprice_after_the_counter_exists_reach_the_budget(setup: tuple[str, str | None]) -> None:
    db, redis = setup
    ledger = open_ledger(db, audit=False)
    enf = enforcer(db, "  daily_limit_usd: 5.00\n", ledger, clock=Clock(NOW), redis=redis)
    try:
        adm = enf.admit(call())  # the counter exists from here on (seeded: nothing spent yet)
        done = ev(NOW - timedelta(minutes=1), "0.50", source="proxy")
        enf.settle(adm, done)
        ledger.record(done)
        ledger.flush()
        # today's usage imported afterwards, one of its models unpriced
        ledger.record_many(
            [ev(NOW - timedelta(hours=1), "3.00"), ev(NOW - timedelta(hours=2), "0", price_status="unpriced")]
        )
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.spent == st.ledger == _ledger_today(ledger) == to_nano(Decimal("3.50"))
        assert st.drift == -to_nano(Decimal("3.00"))  # the counter was $3 short before reconciling
        assert st.to_dict()["drift"] == "-3"
        held = [enf.admit(call()) for _ in range(4)]  # 3.50 spent: three calls of 0.50 fit, a fourth not
        assert [a.allowed for a in held] == [True, True, True, False]
        for a in held:
            enf.release(a)
        # reprice: the unpriced import gets a price; the counter follows once reconciled
        [unpriced] = [e for e in ledger.query(limit=10) if e.price_status == "unpriced"]
        ledger.update_costs([(unpriced.id, to_nano(Decimal("1.25")), "priced")])
        enf.reconcile()
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.spent == _ledger_today(ledger) == to_nano(Decimal("4.75")) and st.drift == 0
        assert not enf.admit(call()).allowed  # 4.75 + 0.50 > 5.00
    finally:
        _cleanup(enf)
        ledger.close()


@pytest.mark.parametrize("ledger_first", [False, True])
def test_a_settled_call_counts_once_whoever_comes_first(
    setup: tuple[str, str | None], ledger_first: bool
) -> None:
    db, redis = setup
    ledger = open_ledger(db, audit=False)
    enf = enforcer(db, "  daily_limit_usd: 100\n", ledger, clock=Clock(NOW), redis=redis)
    try:
        enf.reconcile()
        for i in range(3):
            adm = enf.admit(call())
            done = ev(NOW - timedelta(seconds=i), "0.25", source="proxy")
            if ledger_first:  # the ledger writer was faster than the settlement
                ledger.record(done)
                ledger.flush()
                enf.reconcile()
                enf.settle(adm, done)
            else:
                enf.settle(adm, done)
                enf.reconcile()  # the event is not in the ledger yet: it counts as pending
                ledger.record(done)
                ledger.flush()
            [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
            assert st.spent == to_nano(Decimal("0.25")) * (i + 1) == _ledger_today(ledger)
            assert st.unledgered == 0
        # settled but not in the ledger (writer behind): counted, shown as unledgered
        adm = enf.admit(call())
        enf.settle(adm, ev(NOW, "0.25", source="proxy"))
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.spent == to_nano(Decimal("1.00")) and st.unledgered == to_nano(Decimal("0.25"))
        assert st.ledger == _ledger_today(ledger) == to_nano(Decimal("0.75"))
    finally:
        _cleanup(enf)
        ledger.close()


def test_an_unpriced_gated_call_keeps_its_worst_case_until_priced(setup: tuple[str, str | None]) -> None:
    db, redis = setup
    ledger = open_ledger(db, audit=False)
    enf = enforcer(db, "  daily_limit_usd: 100\n", ledger, clock=Clock(NOW), redis=redis)
    try:
        adm = enf.admit(call())  # reserved 0.50 (the test price)
        done = ev(NOW, "0", source="proxy", price_status="unpriced", cost_usd=None)
        enf.settle(adm, done)
        ledger.record(done)
        ledger.flush()
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.ledger == 0 and st.spent == to_nano(Decimal("0.50"))  # unknown cost is never $0
        ledger.update_costs([(done.id, to_nano(Decimal("0.10")), "priced")])  # reprice found a price
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.spent == st.ledger == to_nano(Decimal("0.10"))
    finally:
        _cleanup(enf)
        ledger.close()


def test_status_without_reconciling_shows_the_drift_now_and_writes_nothing(
    setup: tuple[str, str | None],
) -> None:
    db, redis = setup
    ledger = open_ledger(db, audit=False)
    budgets = "  daily_limit_usd: 5.00\n  limits:\n    - {scope: agent, limit_usd: 2.00, period: day}\n"
    enf = enforcer(db, budgets, ledger, clock=Clock(NOW), redis=redis)
    try:
        adm = enf.admit(call(agent="a1"))  # the counters exist from here on
        done = ev(NOW - timedelta(minutes=1), "0.50", source="proxy", agent="a1")
        enf.settle(adm, done)
        ledger.record(done)
        ledger.flush()
        adm = enf.admit(call(agent="a1"))
        enf.settle(adm, ev(NOW, "0.25", source="proxy", agent="a1"))  # not in the ledger yet
        ledger.record_many([ev(NOW - timedelta(hours=1), "3.00", agent="a2")])  # imported: no counter
        stored = {k: enf.store.totals([k]) for k in enf.store.scan("")}
        for _ in range(2):  # reading twice changes nothing: nothing was written
            daily, *per_agent = budget_status(enf.budgets, enf.store, enf.tz, NOW, reconcile=False)
            assert daily.spent == to_nano(Decimal("0.75"))  # what the counter holds now
            assert daily.ledger == to_nano(Decimal("3.50")) and daily.unledgered == to_nano(Decimal("0.25"))
            assert daily.drift == -to_nano(Decimal("3.00")) and daily.to_dict()["drift"] == "-3"
            agents = {s.value: (s.spent, s.ledger, s.drift) for s in per_agent}
            # a2 has no counter: it reads as the ledger's figure, no drift
            assert agents == {
                "a1": (to_nano(Decimal("0.75")), to_nano(Decimal("0.50")), 0),
                "a2": (to_nano(Decimal("3.00")), to_nano(Decimal("3.00")), 0),
            }
            assert {k: enf.store.totals([k]) for k in enf.store.scan("")} == stored
        enf.reconcile()
        daily, *_ = budget_status(enf.budgets, enf.store, enf.tz, NOW, reconcile=False)
        assert daily.spent == to_nano(Decimal("3.75")) and daily.drift == 0
    finally:
        _cleanup(enf)
        ledger.close()


def test_counters_that_cannot_be_read_fail_closed_unless_open(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = open_ledger(db, audit=False)
    budgets = "  daily_limit_usd: 5.00\n"
    closed = enforcer(db, budgets, ledger, clock=Clock(NOW))
    opened = enforcer(db, budgets + "  on_error: open\n", ledger, clock=Clock(NOW))
    blocker = sqlite3.connect(str(tmp_path / "l.db"), timeout=0)
    try:
        for e in (closed, opened):
            e.store._db.execute("PRAGMA busy_timeout=100")  # type: ignore[attr-defined]
        blocker.execute("BEGIN EXCLUSIVE")  # the database cannot be read or written
        with pytest.raises(BudgetUnavailable) as info:
            closed.admit(call())
        assert "cannot check the budget" in str(info.value) and "on_error: open" in str(info.value)
        assert "locked" in str(info.value)
        assert opened.admit(call()).allowed  # chosen: let calls through unchecked
    finally:
        blocker.rollback()
        blocker.close()
        closed.close()
        opened.close()
        ledger.close()


def test_redis_counters_with_an_unreachable_ledger_fail_closed(redis_url: str) -> None:
    from fakes.servers import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/llmbudget"
    enf = enforcer(dead, "  daily_limit_usd: 5.00\n", None, clock=Clock(NOW), redis=redis_url)
    try:
        # the seed (what the ledger already holds today) cannot be read: never count from zero
        with pytest.raises(BudgetUnavailable) as info:
            enf.admit(call())
        assert "OperationalError" in str(info.value) or "connect" in str(info.value)
    finally:
        _cleanup(enf)


def test_serve_reconciles_writes_it_never_saw_periodically(tmp_path: Path) -> None:
    """A wrap() without the gate (or another tool) writes to the ledger: serve's counters follow."""
    from fakes.servers import running_proxy

    from llmbudget.config import Config
    from llmbudget.events import UsageEvent

    cfg = Config.model_validate(
        {
            "backends": {"anthropic": {"kind": "anthropic", "base_url": "http://127.0.0.1:9"}},
            "budgets": {"daily_limit_usd": "5", "timezone": "UTC", "reconcile_interval_s": 0.2},
        }
    )
    with running_proxy(cfg, tmp_path / "l.db") as proxy:
        enf = proxy.services.enforcer
        ungated = UsageEvent(
            backend="anthropic",
            model="m",
            provider="anthropic",
            cost_usd=Decimal("1.25"),
            price_status="priced",
        )
        other = open_ledger(f"sqlite:///{tmp_path / 'l.db'}", audit=False)  # another process's ledger
        try:
            other.record_many([ungated])
        finally:
            other.close()
        deadline = time.monotonic() + 5
        while True:
            spent = sum(v[0] for v in enf.store.scan("daily|").values())
            if spent == to_nano(Decimal("1.25")):
                break
            assert time.monotonic() < deadline, f"counter still at {spent}"
            time.sleep(0.05)
        health = enf.drift()
        assert health is not None and health["counters"] >= 1


def test_a_busy_lease_takes_its_next_slice_before_it_runs_out(setup: tuple[str, str | None]) -> None:
    """Calls keep being admitted in-process while a slice runs low: the next one is taken in the
    background (no call has to ask the store), and a reconciliation that finds no drift keeps the
    lease, while one that finds drift gives it back."""
    from llmbudget.budget.lease import SLICE_CALLS

    db, redis = setup
    ledger = open_ledger(db, audit=False)
    enf = enforcer(db, "  daily_limit_usd: 100000\n", ledger, clock=Clock(NOW), redis=redis)
    enf.batch = True  # as in the proxy: the lease's own thread writes settlements and takes slices
    worst = to_nano(Decimal("0.50"))
    try:
        held = [enf.admit(call())]  # the first call asks the store: a slice of 1,024 worst cases
        [key] = enf.book.held
        assert enf.book.held[key] == SLICE_CALLS * worst
        for _ in range(SLICE_CALLS // 2 + 10):  # past half of the slice, every call admitted locally
            adm = enf.admit_local(call())
            assert adm is not None and adm.allowed
            held.append(adm)
        deadline = time.monotonic() + 10
        while enf.book.held[key] < 2 * SLICE_CALLS * worst and time.monotonic() < deadline:
            time.sleep(0.02)
        assert enf.book.held[key] == 2 * SLICE_CALLS * worst  # the next slice, taken in the background
        for _ in range(SLICE_CALLS // 2):  # what the first slice alone could not have covered
            adm = enf.admit_local(call())
            assert adm is not None and adm.allowed
            held.append(adm)
        for a in held:
            enf.release(a)
        enf.reconcile()  # nothing moved: the lease stays
        assert enf.book.held[key] == 2 * SLICE_CALLS * worst
        ledger.record_many([ev(NOW - timedelta(hours=1), "3.00")])  # an import: the counter moves
        enf.reconcile()
        assert enf.book.held.get(key, 0) == 0  # given back: the next calls are checked against the new figure
    finally:
        _cleanup(enf)
        ledger.close()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_reconciling_drops_the_pending_rows_the_ledger_holds_and_keeps_an_unpriced_worst_case(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db = str(request.getfixturevalue("pg_url")) if store == "postgres" else f"sqlite:///{tmp_path / 'l.db'}"
    ledger = open_ledger(db, audit=False)
    enf = enforcer(db, "  daily_limit_usd: 100\n", ledger, clock=Clock(NOW))
    try:
        priced = [ev(NOW, "0.10", source="proxy") for _ in range(3)]
        unpriced = ev(NOW, "0", source="proxy", price_status="unpriced", cost_usd=None)
        waiting = ev(NOW, "0.20", source="proxy")  # settled, not in the ledger yet
        for done in [*priced, unpriced, waiting]:
            enf.settle(enf.admit(call()), done)
        enf.flush()
        ledger.record_many([*priced, unpriced])
        ledger.flush()

        def pending() -> dict[str, tuple[int, int]]:
            rows = _sql(db, "SELECT event_id, amount, kept FROM budget_pending")
            return {r[0]: (int(r[1]), int(r[2])) for r in rows}

        assert set(pending()) == {e.id for e in [*priced, unpriced, waiting]}
        enf.reconcile()
        # the priced events count from the ledger; the unpriced one keeps its worst case (0.50, the
        # test price) beside a zero amount; the one the ledger lacks is still whole
        left = pending()
        assert left == {unpriced.id: (0, to_nano(Decimal("0.50"))), waiting.id: (to_nano(Decimal("0.20")), 0)}
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.spent == to_nano(Decimal("0.30") + Decimal("0.50") + Decimal("0.20"))
        ledger.update_costs([(unpriced.id, to_nano(Decimal("0.05")), "priced")])
        ledger.record(waiting)
        ledger.flush()
        enf.reconcile()
        assert pending() == {}
        [st] = budget_status(enf.budgets, enf.store, enf.tz, NOW)
        assert st.spent == st.ledger == to_nano(Decimal("0.55"))
    finally:
        _cleanup(enf)
        ledger.close()


def test_postgres_vacuums_the_pending_queue_as_it_reconciles(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmbudget.budget.counters import sql as counters_sql

    monkeypatch.setattr(counters_sql, "VACUUM_S", 0.0)  # due at every reconciliation
    ledger = open_ledger(pg_url, audit=False)
    enf = enforcer(pg_url, "  daily_limit_usd: 100\n", ledger, clock=Clock(NOW))
    try:
        done = [ev(NOW, "0.01", source="proxy") for _ in range(50)]
        for d in done:
            enf.settle(enf.admit(call()), d)
        enf.flush()
        ledger.record_many(done)
        ledger.flush()
        enf.reconcile()  # the 50 pending rows are deleted, then the table is vacuumed
        assert _sql(pg_url, "SELECT count(*) FROM budget_pending") == [(0,)]
        deadline = time.monotonic() + 10
        while True:  # the statistics reach the view a moment after the vacuum ends
            [(vacuums, dead)] = _sql(
                pg_url,
                "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'budget_pending'",
            )
            if vacuums or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert vacuums >= 1 and dead == 0
    finally:
        _cleanup(enf)
        ledger.close()


def test_reconciling_looks_events_up_by_id_even_where_postgres_has_no_statistics(pg_url: str) -> None:
    import psycopg

    from llmbudget.budget.seed import counter_sums_sql, spec_for
    from llmbudget.store.dialect import pg_sql

    ledger = open_ledger(pg_url, audit=False)
    enf = enforcer(pg_url, "  daily_limit_usd: 100\n", ledger, clock=Clock(NOW))
    try:
        ledger.record_many([ev(NOW - timedelta(minutes=5), "0.01") for _ in range(3000)])
        ledger.flush()
        [booked] = enf._charges(call(), NOW, 10, 10)
        # a busy counter's settlements whose events are not in the ledger yet
        _sql(
            pg_url,
            "INSERT INTO budget_pending (event_id, counter, amount, kept, settled_at) "
            "SELECT 'e' || g, ?, 1, 0, 0 FROM generate_series(1, 20000) AS g",
            (booked.charge.key,),
        )
        spec = spec_for(booked.budget, booked.value, booked.window, booked.window.read_keys[0], None)
        sql, params = counter_sums_sql(spec, booked.charge.key, True)
        with psycopg.connect(pg_url) as conn:  # never analyzed: autovacuum is off here, as it may be anywhere
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + pg_sql(sql), params))
        # a join was planned as a hash of the whole events table, at every reconciliation
        assert "Seq Scan on events" not in plan, plan
        assert "Index Scan using events_pkey" in plan or "Index Only Scan using events_pkey" in plan, plan
    finally:
        _cleanup(enf)
        ledger.close()
