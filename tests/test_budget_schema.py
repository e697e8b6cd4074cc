"""The budget counters' tables and PostgreSQL functions come from the ledger's named migrations, and a
database whose counter store created them itself (earlier versions did) opens as before."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import llmbudget
from llmbudget.budget.counters import Charge, open_counters
from llmbudget.store import open_ledger
from llmbudget.store.migrations import MIGRATIONS

OWNERS = "0013_budget_owners_and_functions"
FUNCTIONS = ("llmb_budget_reserve_v2", "llmb_budget_settle_v1", "llmb_budget_settle_v2")


def _sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite:///") :]) as conn:
            return conn.execute(sql, params).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []


def _tables(url: str) -> set[str]:
    if url.startswith("sqlite:///"):
        return {r[0] for r in _sql(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {r[0] for r in _sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_no_module_but_the_migrations_writes_schema() -> None:
    root = Path(llmbudget.__file__).parent
    ddl = re.compile(r"\b(CREATE (TABLE|INDEX|UNIQUE INDEX|FUNCTION|OR REPLACE FUNCTION)|ALTER TABLE)\b")
    owners = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p != root / "store" / "migrations.py" and ddl.search(p.read_text(encoding="utf-8"))
    )
    assert owners == []


def test_counters_on_a_fresh_database_get_their_schema_from_the_migrations(ledger_url: str) -> None:
    store = open_counters(ledger_url)
    try:
        applied = [r[0] for r in _sql(ledger_url, "SELECT name FROM migrations ORDER BY name")]
        assert applied == sorted(m.name for m in MIGRATIONS[store.dialect])  # type: ignore[attr-defined]
        assert {"budget_counters", "budget_reservations", "budget_pending", "budget_owners"} <= _tables(
            ledger_url
        )
        if not ledger_url.startswith("sqlite:///"):
            assert all(_sql(ledger_url, "SELECT to_regproc(?) IS NOT NULL", (f,))[0][0] for f in FUNCTIONS)
        key = "daily|*|day:2025-03-01"
        rid = store.reservation_id("r1")
        assert store.reserve(rid, [Charge("daily", key, (key,), 100, 30)], 60) is None
        assert store.settle(rid, [(key, 12)]) is False
        assert store.totals([key]) == {key: (12, 0)}
    finally:
        store.close()


def test_a_database_whose_counter_store_made_the_tables_itself_still_opens(ledger_url: str) -> None:
    open_ledger(ledger_url).close()
    # as an earlier version leaves it: the ledger migrated up to the migration before, the owners
    # table and the functions made by the counter store when it opened, with rows in them
    _sql(ledger_url, "DELETE FROM migrations WHERE name = ?", (OWNERS,))
    _sql(
        ledger_url,
        "INSERT INTO budget_owners (owner, host, pid, started, heartbeat) VALUES (?, ?, ?, ?, ?)",
        ("elsewhere:1:abcd", "elsewhere", 1, "", 1.0),
    )
    key = "daily|*|day:2025-03-02"
    _sql(ledger_url, "INSERT INTO budget_counters (counter, spent, reserved) VALUES (?, ?, ?)", (key, 40, 0))
    with open_ledger(ledger_url) as led:
        assert [n for n, _, now in led.migrations_applied_now if now] == [OWNERS]  # type: ignore[attr-defined]
    store = open_counters(ledger_url)
    try:
        # the stale owner from before is released like any other; the counter kept its spend
        assert (
            _sql(ledger_url, "SELECT owner FROM budget_owners WHERE owner = ?", ("elsewhere:1:abcd",)) == []
        )
        rid = store.reservation_id("r2")
        refusal = store.reserve(rid, [Charge("daily", key, (key,), 100, 70)], 60)
        assert refusal is not None and refusal.spent == 40
        assert store.reserve(rid, [Charge("daily", key, (key,), 100, 60)], 60) is None
        assert store.totals([key]) == {key: (40, 60)}
    finally:
        store.close()
