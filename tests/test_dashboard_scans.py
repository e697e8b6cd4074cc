"""No dashboard page, dashboard API or budget reconciliation reads the events table without a bound.

Every SQL statement the real app runs on SQLite while serving each page is recorded (a trace
callback on every connection it opens) and its query plan asked of SQLite: a full scan of
`events`, an index walked for an `IN (...)` over every event, or the time index walked without a
`LIMIT`, would grow with the ledger; the pages must stay as fast at 10 M events as at 10.
Reads through an index with an equality or a range (one session, the last hour) are bounded.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from llmbudget.app import build_app, close_live
from llmbudget.config import Config
from llmbudget.events import UsageEvent
from llmbudget.pricing import PriceBook
from llmbudget.services import Services
from llmbudget.store import open_ledger

NOW = datetime.now(UTC)

BUDGETS = {
    "daily_limit_usd": 50,
    "monthly_limit_usd": 500,
    "per_backend": {"openai": "200/month"},
    "limits": [
        {"scope": "agent", "limit_usd": 5, "period": "day"},
        {"scope": "agent", "match": "planner", "limit_usd": 3, "period": "5h"},
        {"name": "per-session", "scope": "session", "limit_usd": 1, "period": "session"},
        {"scope": "team", "limit_tokens": 1_000_000, "period": "week"},
    ],
}


def _events() -> list[UsageEvent]:
    out = []
    for i in range(60):
        agent = ("planner", "coder", "critic")[i % 3]
        out.append(
            UsageEvent(
                timestamp=NOW - timedelta(minutes=37 * i),
                backend="openai" if i % 2 else "anthropic",
                provider="openai" if i % 2 else "anthropic",
                model="gpt-4o-mini" if i % 2 else "claude-haiku-4-5",
                input_tokens=1000 + i,
                output_tokens=100,
                cost_usd=None if i % 11 == 5 else Decimal("0.01") * (i % 7 + 1),
                price_status="unpriced" if i % 11 == 5 else "priced",
                agent=agent,
                team="red",
                session=f"{agent}-{i // 12}",
                status="blocked" if i % 13 == 3 else "ok",
                http_status=429 if i % 13 == 3 else 200,
                source="proxy",
            )
        )
    return out


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(database file, SQL with its values) of every statement run on a connection opened from here on."""
    seen: list[tuple[str, str]] = []
    real = sqlite3.connect

    def connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(database, *args, **kwargs)
        path = str(database)
        conn.set_trace_callback(lambda sql: seen.append((path, sql)))
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


@pytest.fixture
def served(tmp_path: Path, statements: list[tuple[str, str]]) -> Iterator[tuple[TestClient, Services]]:
    cfg = Config.model_validate({"timezone": "UTC", "budgets": BUDGETS})
    ledger = open_ledger(f"sqlite:///{tmp_path / 'dash.db'}", flush_interval_s=0.05)
    ledger.record_many(_events())
    ledger.flush()
    services = Services(config=cfg, ledger=ledger, prices=PriceBook.from_config(cfg))
    try:
        with TestClient(build_app(services).web) as client:
            yield client, services
    finally:
        close_live(services)
        services.close()


_ALIAS = re.compile(r"\bevents\s+(?:AS\s+)?(?!WHERE|ON|GROUP|ORDER|LIMIT|LEFT|JOIN|INNER|USING)(\w+)", re.I)


def unbounded(path: str, sql: str) -> list[str]:
    """The plan lines of `sql` that read events without a bound (empty when none)."""
    if not re.search(r"\bevents\b", sql, re.I) or not re.match(
        r"\s*(SELECT|UPDATE|DELETE|WITH|INSERT)", sql, re.I
    ):
        return []
    names = {"events", *(m.lower() for m in _ALIAS.findall(sql))}
    conn = sqlite3.connect(path)
    try:
        plan = [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    finally:
        conn.close()
    bad = []
    for line in plan:
        m = re.match(r"(SCAN|SEARCH) (\w+)", line)
        if "FOR IN-OPERATOR" in line and re.search(r"events", line):
            bad.append(line)  # every event id walked for an IN (SELECT id FROM events)
        elif m and m.group(2).lower() in names and m.group(1) == "SCAN":
            if "USING" not in line:
                bad.append(line)  # the whole table
            elif not re.search(r"\bLIMIT\b", sql, re.I):
                bad.append(line)  # a whole index, with nothing to stop early
    return bad


PAGES = (
    "/",
    "/sessions",
    "/budgets",
    "/events",
    "/events?agent=planner",
    "/events?status=blocked",
    "/events?session=coder-1",
    "/events?since=7d&backend=openai",
    "/api/overview",
    "/api/agents",
    "/api/agents/planner",
    "/api/dashboard/sessions",
    "/api/dashboard/sessions.csv",
    "/api/sessions/planner-0",
    "/api/enforcement",
    "/api/budgets",
    "/api/thresholds",
    "/api/notifications",
    *(f"/api/charts/{n}" for n in ("daily", "models", "agents", "tiers", "hourly")),
    *(f"/charts/{n}.svg" for n in ("daily", "models", "agents", "tiers", "hourly")),
)


def test_no_page_reads_events_without_a_bound(
    served: tuple[TestClient, Services], statements: list[tuple[str, str]]
) -> None:
    client, services = served
    some = services.ledger.query(limit=1)[0]
    checked = 0
    for url in (*PAGES, f"/api/events/{some.id}/explain"):
        statements.clear()
        assert client.get(url).status_code == 200, url
        found = {sql: unbounded(path, sql) for path, sql in list(statements)}
        checked += sum(1 for sql in found if re.search(r"\bevents\b", sql, re.I))
        assert {sql: bad for sql, bad in found.items() if bad} == {}, url
    assert checked > 20  # the pages did read events, through the statements checked


def test_reconciling_the_counters_reads_no_event_it_does_not_need(
    served: tuple[TestClient, Services], statements: list[tuple[str, str]]
) -> None:
    client, services = served
    assert client.get("/budgets").status_code == 200
    enforcer = services.enforcer
    assert enforcer is not None
    statements.clear()
    enforcer.reconcile()
    found = {sql: unbounded(path, sql) for path, sql in list(statements)}
    assert any("budget_pending" in sql for sql in found)  # the pending settlements were levelled
    assert {sql: bad for sql, bad in found.items() if bad} == {}
