"""The dashboard's JSON API and pages in-process (Starlette TestClient) over a real ledger."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from llmbudget.app import build_app, close_live
from llmbudget.config import Config, DashboardConfig
from llmbudget.events import UsageEvent
from llmbudget.pricing import PriceBook
from llmbudget.services import Services
from llmbudget.store import open_ledger

NOW = datetime.now(UTC)


def ev(agent: str, session: str | None, cost: str | None, minutes_ago: float, **kw: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "backend": "openai",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    base.update(kw)
    return UsageEvent(
        timestamp=NOW - timedelta(minutes=minutes_ago),
        cost_usd=None if cost is None else Decimal(cost),
        price_status="unpriced" if cost is None else "priced",
        agent=agent,
        session=session,
        **base,
    )


EVENTS = [
    # planner: rising cost per request, session s1
    *[ev("planner", "s1", f"0.00{i + 1}", 30 - i) for i in range(8)],
    # coder: two sessions; the newest (s3) is its current one
    ev("coder", "s2", "0.50", 200),
    ev("coder", "s3", "1.25", 3, tier="gold"),
    ev("coder", "s3", "1.25", 2, tier="gold"),
    # a refused call and a spreadsheet-formula session name
    ev(
        "coder",
        "s3",
        "0",
        1,
        status="blocked",
        http_status=429,
        input_tokens=0,
        output_tokens=0,
        reason="budget 'daily' is spent",
    ),
    ev("=evil", "=HYPERLINK(1)", "0.01", 40),
]


def make_services(url: str, *, idle: float = 30, budgets: dict[str, Any] | None = None) -> Services:
    cfg = Config(
        dashboard=DashboardConfig(session_idle_minutes=idle), **({"budgets": budgets} if budgets else {})
    )
    ledger = open_ledger(url, flush_interval_s=0.05)
    ledger.record_many(EVENTS)
    return Services(config=cfg, ledger=ledger, prices=PriceBook.from_config(cfg))


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    s = make_services(f"sqlite:///{tmp_path / 'dash.db'}", budgets={"daily_limit_usd": "2.00"})
    yield s
    close_live(s)
    s.close()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    app = build_app(services)
    with TestClient(app.web) as c:
        yield c


def test_overview_totals_budgets_and_forecast(client: TestClient) -> None:
    o = client.get("/api/overview").json()
    today_nano = sum(
        e.cost_nano or 0
        for e in EVENTS
        if e.timestamp >= NOW - timedelta(minutes=200)
        and e.timestamp.astimezone(Config().zone()).date() == NOW.astimezone(Config().zone()).date()
    )
    assert o["today"]["cost_nano"] == today_nano
    assert o["month"]["calls"] >= o["today"]["calls"] > 0
    assert int(o["forecast"]["month_end_projected_nano"]) >= o["month"]["cost_nano"]
    [b] = o["budgets"]
    assert b["name"] and b["status"] in ("warning", "exhausted") and b["label"].startswith(("⚠", "✖"))
    assert set(b["forecast"]) >= {"runs_out_at", "exhausted", "holds_until_reset"}
    assert o["enforcement"]["active"] is True and o["enforcement"]["failing"] is None
    assert [(r["agent"], r["reason"]) for r in o["refusals"]] == [("coder", "budget 'daily' is spent")]


def test_budgets_page_shows_the_drift_now_without_reconciling(tmp_path: Path) -> None:
    s = make_services(
        f"sqlite:///{tmp_path / 'drift.db'}", budgets={"daily_limit_usd": "20", "reconcile_interval_s": 3600}
    )
    try:
        with TestClient(build_app(s).web) as client:
            enf = s.enforcer
            assert enf is not None
            enf.reconcile()  # the counters hold the ledger's spend
            page = client.get("/budgets").text
            assert "none: every counter agrees with the ledger" in page
            assert "1 counter, 0 corrected" in page
            before = client.get("/api/enforcement").json()
            # usage that never met the gate (an import) after the counter exists
            s.ledger.record_many([ev("importer", None, "1.50", 5)])
            s.ledger.flush()
            for _ in range(2):  # shown on every load, never corrected by one
                body = client.get("/api/enforcement").json()
                [b] = body["budgets"]
                assert b["spent_nano"] == before["budgets"][0]["spent_nano"]  # the counter as it is
                assert b["ledger_spent_nano"] - b["spent_nano"] == 1_500_000_000 == -b["drift_nano"]
                assert body["enforcement"]["compared"] is True
                assert list(body["enforcement"]["drift"].values()) == ["-1.5"]
            assert "daily: −$1.50 (the next reconciliation corrects it)" in client.get("/budgets").text
            enf.reconcile()  # what serve does every budgets.reconcile_interval_s
            body = client.get("/api/enforcement").json()
            assert body["budgets"][0]["drift_nano"] == 0
            assert body["enforcement"]["last_reconcile"]["drift_nano"] == -1_500_000_000
            assert "1 counter, 1 corrected by −$1.50" in client.get("/budgets").text
    finally:
        close_live(s)
        s.close()


def test_agent_cards(client: TestClient) -> None:
    cards = {c["agent"]: c for c in client.get("/api/agents").json()["agents"]}
    p = cards["planner"]
    assert p["session"] == "s1" and p["session_tokens"] == 8 * 1100
    assert p["session_cost_usd"] == "0.036000000" and p["level"] == "green"
    assert p["trend"] == "rising" and p["arrow"] == "↗"
    assert p["avg_cost_nano"] == 4_500_000 and p["high_cost"] is False
    c = cards["coder"]
    assert c["session"] == "s3" and c["session_cost_usd"] == "2.500000000" and c["level"] == "yellow"
    assert c["high_cost"] is True  # $0.83 a request on average
    one = client.get("/api/agents/planner").json()
    assert 'Tokens this session: <span data-f="tokens">8,800</span>' in one["html"]
    assert 'title="Avg cost/request: $0.004 (last 10 requests)"' in one["html"]
    assert client.get("/api/agents/nobody").json()["error"]["code"] == "not_found"


def test_agent_cards_in_a_busy_hour(tmp_path: Path) -> None:
    now = datetime.now(UTC)

    def at(agent: str, minutes_ago: float, usd: str) -> UsageEvent:
        return UsageEvent(
            timestamp=now - timedelta(minutes=minutes_ago),
            backend="openai",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=10,
            output_tokens=1,
            cost_usd=Decimal(usd),
            price_status="priced",
            agent=agent,
            session=f"{agent}-s",
        )

    events = [at("busy", 4.5 * i / 2000, "0.0001") for i in range(2000)]  # the newest 2,000 calls, nearly
    events += [at("loop", 7.5 + 5 * i, "0.01") for i in range(11)]  # $0.01 in each earlier 5 minutes
    events += [at("loop", 1 + i * 0.3, "0.10") for i in range(10)]  # then $1.00 in the last 5
    events += [at("quiet", 20 + i, "0.02") for i in range(12)]  # active this hour, not lately
    cfg = Config()
    ledger = open_ledger(f"sqlite:///{tmp_path / 'busy.db'}", flush_interval_s=0.05)
    ledger.record_many(events)
    s = Services(config=cfg, ledger=ledger, prices=PriceBook.from_config(cfg))
    try:
        with TestClient(build_app(s).web) as client:
            cards = {c["agent"]: c for c in client.get("/api/agents").json()["agents"]}
        assert set(cards) == {"busy", "loop", "quiet"}
        loop = cards["loop"]
        assert loop["runaway"] is True
        assert (loop["spend_5m_nano"], loop["baseline_5m_nano"]) == (1_000_000_000, 10_000_000)
        assert sum(c for _, c in loop["recent_spend"]) == 1_110_000_000  # the hour, a point a minute
        assert len(loop["recent_spend"]) <= 60 and loop["avg_cost_usd"] == "0.100000000"
        assert cards["busy"]["runaway"] is False and cards["busy"]["spend_5m_nano"] == 200_000_000
        quiet = cards["quiet"]  # not among the newest 2,000 calls: its own newest 10 all the same
        assert quiet["avg_cost_usd"] == "0.020000000" and quiet["session_calls"] == 12
        assert quiet["runaway"] is False and quiet["spend_5m_nano"] == 0
    finally:
        close_live(s)
        s.close()


def test_sessions_detail_end_and_csv(client: TestClient) -> None:
    items = client.get("/api/dashboard/sessions").json()["sessions"]
    by = {s["session"]: s for s in items}
    assert by["s3"]["agents"] == ["coder"] and by["s3"]["ended"] is False
    assert by["s2"]["ended_by"] == "idle"  # 200 minutes without a call, idle limit 30
    d = client.get("/api/sessions/s1").json()
    assert d["by_agent"][0]["agent"] == "planner" and d["by_agent"][0]["calls"] == 8
    r = client.post("/api/sessions/s3/end", json={})
    assert r.status_code == 200 and r.json()["ended_by"] == "client" and r.json()["changed"] is True
    assert client.post("/api/sessions/s3/end", json={}).json()["changed"] is False
    assert client.post("/api/sessions/nope/end", json={}).status_code == 404
    bad = client.post("/api/sessions/s3/end", content=b"reason=x", headers={"content-type": "text/plain"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "content-type"
    r = client.get("/api/dashboard/sessions.csv")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["session", "start", "end", "tokens", "cost_usd", "agents"]
    assert {row[0] for row in rows[1:]} == {"s1", "s2", "s3", "'=HYPERLINK(1)"}
    evil = next(row for row in rows if row[0].startswith("'="))
    assert evil[5] == "'=evil" and evil[4] == "0.010000000"


def test_explain_tokens_by_kind_times_price(client: TestClient, services: Services) -> None:
    e = services.ledger.query(filters={"agent": "planner"}, limit=1)[0]
    d = client.get(f"/api/events/{e.id}/explain").json()
    kinds = {line["kind"]: line for line in d["lines"]}
    assert kinds["input"]["tokens"] == 1000 and kinds["output"]["tokens"] == 100
    assert Decimal(kinds["input"]["price_per_mtok"]) > 0 and "genai-prices" in d["source"]
    assert Decimal(d["computed_usd"]) == sum(Decimal(x["cost_usd"]) for x in d["lines"])
    assert client.get("/api/events/nope/explain").status_code == 404


@pytest.mark.parametrize("name", ["daily", "models", "agents", "tiers", "hourly"])
def test_charts(client: TestClient, name: str) -> None:
    d = client.get(f"/api/charts/{name}").json()
    assert d["name"] == name and d["title"]
    if name == "daily":
        assert len(d["labels"]) == 30 and sum(d["series"][0]["cost_nano"]) > 0
    if name == "hourly":
        assert len(d["labels"]) == 24 and sum(d["calls"]) >= 1
    if name == "tiers":
        assert any(i["key"] == "gold" for i in d["items"])


def test_thresholds_crud_and_validation(client: TestClient) -> None:
    r = client.post(
        "/api/thresholds", json={"scope": "session", "agent": "*", "limit_usd": "1.5", "auto_pause": True}
    )
    assert r.status_code == 200 and r.json()["limit_nano"] == 1_500_000_000
    client.post("/api/thresholds", json={"scope": "agent", "agent": "coder", "limit_usd": 3})
    got = client.get("/api/thresholds").json()["thresholds"]
    assert [(t["scope"], t["agent"], t["auto_pause"]) for t in got] == [
        ("agent", "coder", False),
        ("session", "*", True),
    ]
    for body, field in [
        ({"scope": "week", "limit_usd": "1"}, "scope"),
        ({"scope": "agent", "limit_usd": "-1"}, "limit_usd"),
        ({"scope": "agent", "limit_usd": "lots"}, "limit_usd"),
        ({"scope": "agent", "limit_usd": "1", "auto_pause": "yes"}, "auto_pause"),
        ({"scope": "agent", "limit_usd": "1", "colour": "red"}, "colour"),
    ]:
        r = client.post("/api/thresholds", json=body)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, body
    assert client.delete("/api/thresholds/session/*").json()["deleted"] is True
    assert client.delete("/api/thresholds/session/*").status_code == 404


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/api/charts/pie", 404),
        ("GET", "/api/sessions/unknown", 404),
        ("GET", "/api/overview?x=1", 400),
        ("POST", "/api/thresholds", 400),
        ("DELETE", "/api/thresholds/week/x", 400),
    ],
)
def test_error_shape(client: TestClient, method: str, url: str, status: int) -> None:
    r = client.request(
        method,
        url,
        content=b"[1]" if method == "POST" else None,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) >= {"code", "message", "status"} and err["status"] == status


def test_pages_render(client: TestClient) -> None:
    home = client.get("/").text
    assert 'Tokens this session: <span data-f="tokens">8,800</span>' in home
    assert "Projected month-end" in home and 'src="/static/dashboard.js"' in home
    for name in ("daily", "models", "agents", "tiers", "hourly"):
        assert f'src="/charts/{name}.svg"' in home
        svg = client.get(f"/charts/{name}.svg")
        assert svg.headers["content-type"].startswith("image/svg+xml") and "<svg" in svg.text
    assert (
        "openai" in client.get("/charts/daily.svg").text
        and "planner" in client.get("/charts/agents.svg").text
    )
    assert client.get("/charts/pie.svg").json()["error"]["code"] == "not_found"
    assert "http://" not in home.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from elsewhere
    assert "s3" in client.get("/sessions").text
    assert "Alert thresholds" in client.get("/budgets").text
    page = client.get("/events?agent=planner").text
    assert page.count('data-action="explain"') == 8 and 'value="planner"' in page


def test_dashboard_store_on_postgres(pg_url: str) -> None:
    s = make_services(pg_url)
    try:
        from llmbudget.store.dashboard import (
            Threshold,
            end_session,
            list_thresholds,
            session_ends,
            set_threshold,
        )

        assert end_session(s.ledger, "s1") and not end_session(s.ledger, "s1")
        assert session_ends(s.ledger, ["s1", "s2"])["s1"][1] == "client"
        set_threshold(s.ledger, Threshold("agent", "coder", 10, True))
        assert list_thresholds(s.ledger)[0].auto_pause is True
        from llmbudget.web.data.agents import agent_cards

        cards = {c["agent"]: c for c in agent_cards(s, datetime.now(UTC))}
        assert cards["coder"]["session_cost_usd"] == "2.500000000"
    finally:
        s.close()


def test_a_call_after_a_session_ended_opens_it_again(client: TestClient, services: Services) -> None:
    """The end shown is never before the session's last activity: a later call reopens the session."""
    assert client.post("/api/sessions/s3/end", json={}).json()["ended"] is True
    later = dataclasses.replace(ev("coder", "s3", "0.25", 0), timestamp=datetime.now(UTC))
    services.ledger.record(later)  # the client went on calling
    services.ledger.flush()
    s3 = {s["session"]: s for s in client.get("/api/dashboard/sessions").json()["sessions"]}["s3"]
    assert s3["ended"] is False and s3["end"] is None  # open again (before: ended before its last call)
    assert client.get("/api/sessions/s3").json()["ended"] is False
    r = client.post("/api/sessions/s3/end", json={"reason": "done"}).json()
    assert r["changed"] is True and r["ended_by"] == "done"  # ending it again is a change
    assert r["end"] >= r["last_activity"]
    assert client.post("/api/sessions/s3/end", json={}).json()["changed"] is False
