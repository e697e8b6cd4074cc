"""The JSON report API in-process (Starlette TestClient) over a real SQLite ledger; same data as the CLI's --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from llmbudget import web
from llmbudget.cli import main
from llmbudget.config import Config
from llmbudget.events import UsageEvent
from llmbudget.pricing import PriceBook
from llmbudget.services import Services
from llmbudget.store import open_ledger
from llmbudget.web.api import MAX_LIMIT, ROUTE_MODULES, api_routes, install_error_handlers

NOW = datetime.now(UTC)


def _events() -> list[UsageEvent]:
    out = []
    for i in range(12):
        out.append(
            UsageEvent(
                backend="openai" if i % 3 else "anthropic",
                model="gpt-4o" if i % 3 else "claude-sonnet-4-5",
                timestamp=NOW - timedelta(minutes=5 * i),
                input_tokens=100 + i,
                output_tokens=10,
                cost_usd=Decimal("0.01"),
                price_status="priced",
                agent=f"agent{i % 2}",
                session=f"s{i % 4}",
                task_type="chat" if i % 2 else "code",
                status="error" if i == 5 else "ok",
            )
        )
    out.append(
        UsageEvent(
            backend="local",
            model="mystery",
            timestamp=NOW - timedelta(minutes=1),
            input_tokens=7,
            agent="agent0",
            session="s0",
        )
    )
    return out


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    with open_ledger(url) as led:
        led.record_many(_events())
    return url


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    cfg = Config(timezone="Europe/Berlin")
    services = Services(cfg, open_ledger(db_url), PriceBook.from_config(cfg))
    app = Starlette(routes=api_routes(services))
    install_error_handlers(app)
    try:
        with TestClient(app) as c:
            yield c
    finally:
        services.close()


def _cli_json(
    args: list[str], db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("timezone: Europe/Berlin\n")
    capsys.readouterr()
    assert main([*args, "--json", "--db", db_url, "--config", str(cfg)]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    a, b = dict(a), dict(b)
    a.pop("generated_at")
    b.pop("generated_at")
    assert a == b


@pytest.mark.parametrize(
    "query, args",
    [
        ("", ["costs"]),
        ("?by=agent&since=this-week", ["costs", "--by", "agent", "--since", "this week"]),
        ("?by=task-type&backend=openai", ["costs", "--by", "task-type", "--backend", "openai"]),
        (
            "?by=day&since=last%20month&until=today",
            ["costs", "--by", "day", "--since", "last month", "--until", "today"],
        ),
    ],
)
def test_costs_match_the_cli(
    client: TestClient,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    query: str,
    args: list[str],
) -> None:
    resp = client.get(f"/api/costs{query}")
    assert resp.status_code == 200
    api = resp.json()
    _same(api, _cli_json(args, db_url, tmp_path, capsys))


def test_costs_overview_content(client: TestClient) -> None:
    data = client.get("/api/costs").json()
    assert data["view"] == "overview"
    assert data["this_month"]["total"]["calls"] >= 1
    rows = {r["key"]: r for r in data["by_backend"]["rows"]}
    assert rows  # the events are minutes old: at least the newest are this month
    if "local" in rows:  # the unpriced backend: a count, no cost
        assert rows["local"]["cost_usd"] is None and rows["local"]["unpriced_calls"] == 1


def test_costs_grouped_with_filters(client: TestClient) -> None:
    data = client.get("/api/costs?by=agent&since=1d&task_type=chat").json()
    assert data["by"] == "agent"
    assert data["filters"] == {"task_type": "chat"}
    assert {r["key"] for r in data["rows"]} == {"agent1"}
    assert data["total"]["calls"] == 6
    assert Decimal(data["total"]["cost_usd"]) == Decimal("0.06")


def test_events_match_the_cli(
    client: TestClient, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = client.get("/api/events?limit=5&agent=agent0&since=last_month").json()
    cli = _cli_json(
        ["events", "--limit", "5", "--agent", "agent0", "--since", "last month"], db_url, tmp_path, capsys
    )
    _same(api, cli)
    assert len(api["events"]) == 5
    assert all(e["agent"] == "agent0" for e in api["events"])
    stamps = [e["timestamp"] for e in api["events"]]
    assert stamps == sorted(stamps, reverse=True)


def test_events_default_limit_and_status_filter(client: TestClient) -> None:
    data = client.get("/api/events").json()
    assert data["limit"] == 100 and len(data["events"]) == 13
    data = client.get("/api/events?status=error").json()
    assert [e["status"] for e in data["events"]] == ["error"]


def test_sessions_match_the_cli(
    client: TestClient, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = client.get("/api/sessions?limit=2&since=last%20month").json()
    _same(api, _cli_json(["sessions", "--limit", "2", "--since", "last month"], db_url, tmp_path, capsys))
    assert len(api["sessions"]) == 2
    assert api["sessions"][0]["session"] == "s0"  # most recent activity first
    assert api["sessions"][0]["agents"] == ["agent0"]
    assert api["sessions"][0]["unpriced_calls"] == 1


@pytest.mark.parametrize(
    "url, field",
    [
        ("/api/costs?by=colour", "by"),
        ("/api/costs?since=someday", "since"),
        ("/api/costs?since=today&until=2d", "until"),
        ("/api/costs?colour=red", "colour"),
        ("/api/costs?agent=a&agent=b", "agent"),
        ("/api/events?limit=0", "limit"),
        ("/api/events?limit=abc", "limit"),
        (f"/api/events?limit={MAX_LIMIT + 1}", "limit"),
        ("/api/events?status=fine", "status"),
        ("/api/events?by=agent", "by"),
        ("/api/sessions?agent=x", "agent"),
        ("/api/sessions?since=whenever", "since"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(client: TestClient, url: str, field: str) -> None:
    resp = client.get(url)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["field"] == field and err["status"] == 400 and err["code"] == "invalid"
    assert field in err["message"]


def test_every_api_module_is_listed() -> None:
    """Routes are listed, not discovered: an `api_*.py` module left out of ROUTE_MODULES fails here."""
    on_disk = sorted(p.stem for p in Path(web.__file__).parent.glob("api_*.py"))
    assert on_disk, "no api_*.py modules found"
    assert sorted(m.__name__.rpartition(".")[2] for m in ROUTE_MODULES) == on_disk
    assert all(callable(getattr(m, "routes", None)) for m in ROUTE_MODULES)


def test_costs_limit(client: TestClient) -> None:
    data = client.get("/api/costs?by=session&since=1d&limit=2").json()
    assert len(data["rows"]) == 2 and data["more_rows"] == 2
    assert data["total"]["calls"] == 13
    resp = client.get("/api/costs?by=session&limit=-1")
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "limit"
