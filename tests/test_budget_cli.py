"""`llmbudget budget`, `alerts`, `agents pause|resume` and the budget JSON API."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from llmbudget.admission import CallInfo
from llmbudget.app import build_app
from llmbudget.budget.factory import build_enforcer
from llmbudget.cli import main
from llmbudget.config import parse_config
from llmbudget.events import UsageEvent
from llmbudget.pricing import PriceBook
from llmbudget.services import Services
from llmbudget.store import open_ledger

CONFIG = """backends:
  claude: {kind: anthropic, base_url: http://127.0.0.1:9}
budgets:
  daily_limit_usd: 5.00
  timezone: UTC
  limits:
    - {scope: agent, limit_tokens: 1000, period: day}
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, str]:
    cfg_path = tmp_path / "llmbudget.yaml"
    cfg_path.write_text(CONFIG)
    db = f"sqlite:///{tmp_path / 'l.db'}"
    cfg, _ = parse_config(CONFIG, str(cfg_path))
    with open_ledger(db, audit=False) as ledger:
        enf = build_enforcer(cfg, db, state=ledger, price_fn=lambda *a: Decimal("0.5"))
        a = enf.admit(CallInfo("claude", "anthropic", "anthropic", "m", 100, 100, agent="coder"))
        enf.settle(
            a,
            UsageEvent(
                backend="claude",
                model="m",
                input_tokens=100,
                output_tokens=50,
                cost_usd=Decimal("1.25"),
                price_status="priced",
            ),
        )
        enf.close()
    return str(cfg_path), db


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_budget_json_shows_every_budget(setup: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = setup
    code, out, _ = run(capsys, "budget", "--config", cfg, "--db", db, "--json")
    assert code == 0
    data = json.loads(out)
    daily = next(b for b in data["budgets"] if b["name"] == "daily")
    assert (daily["limit"], daily["spent"], daily["reserved"], daily["remaining"]) == (
        "5",
        "1.25",
        "0",
        "3.75",
    )
    assert daily["percent"] == 25.0 and daily["status"] == "ok" and daily["reset_local"].endswith("00:00 UTC")
    agent = next(b for b in data["budgets"] if b["scope"] == "agent")
    assert (agent["value"], agent["spent"], agent["limit"]) == ("coder", 150, 1000)
    code, out, _ = run(capsys, "budget", "--config", cfg, "--db", db)
    assert code == 0 and "daily" in out and "coder" in out and "ok" in out


def test_budget_utilization_json(setup: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = setup
    code, out, _ = run(capsys, "budget", "--utilization", "--config", cfg, "--db", db, "--json")
    assert code == 0
    assert json.loads(out)["utilization"] == {"cycles": [], "recommendation": None}


def test_agents_pause_resume_and_alerts(setup: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = setup
    code, out, _ = run(
        capsys, "agents", "pause", "coder", "--reason", "runaway loop", "--config", cfg, "--db", db
    )
    assert code == 0 and "agent coder paused" in out
    code, out, _ = run(capsys, "agents", "list", "--config", cfg, "--db", db, "--json")
    assert [p["agent"] for p in json.loads(out)["paused_agents"]] == ["coder"]
    # a proxy (another process) started now refuses the paused agent
    c, _ = parse_config(CONFIG, cfg)
    with open_ledger(db, audit=False) as ledger:
        enf = build_enforcer(c, db, state=ledger, price_fn=lambda *a: Decimal("0.01"))
        r = enf.admit(CallInfo("claude", "anthropic", "anthropic", "m", 1, 1, agent="coder"))
        assert not r.allowed and r.status == 429 and "runaway loop" in (r.message or "")
        enf.close()
    code, out, _ = run(capsys, "agents", "resume", "coder", "--config", cfg, "--db", db, "--json")
    assert json.loads(out) == {"agent": "coder", "paused": False, "changed": True}
    code, out, _ = run(capsys, "alerts", "--config", cfg, "--db", db, "--json")
    kinds = [n["kind"] for n in json.loads(out)["notifications"]]
    assert kinds == ["agent_resumed", "agent_paused"]
    code, _, err = run(capsys, "alerts", "--kind", "nonsense", "--config", cfg, "--db", db)
    assert code == 1 and "unknown kind 'nonsense'" in err


def test_budget_api_routes(setup: tuple[str, str]) -> None:
    cfg_path, db = setup
    cfg, _ = parse_config(CONFIG, cfg_path)
    services = Services(config=cfg, ledger=open_ledger(db, audit=False), prices=PriceBook.from_config(cfg))
    try:
        with TestClient(build_app(services), base_url="http://localhost") as client:
            r = client.get("/api/budgets")
            assert r.status_code == 200
            assert {b["name"] for b in r.json()["budgets"]} >= {"daily"}
            assert client.get("/api/budgets?utilization=true").json()["utilization"]["cycles"] == []
            bad = client.get("/api/budgets?colour=red")
            assert bad.status_code == 400 and bad.json()["error"]["field"] == "colour"
            r = client.post("/api/agents/coder/pause", json={"reason": "too fast"})
            assert r.json() == {"agent": "coder", "paused": True, "changed": True}
            assert [p["agent"] for p in client.get("/api/budgets").json()["paused_agents"]] == ["coder"]
            r = client.post("/api/agents/coder/resume", json={})
            assert r.json() == {"agent": "coder", "paused": False, "changed": True}
            notes = client.get("/api/notifications?limit=5").json()["notifications"]
            assert [n["kind"] for n in notes] == ["agent_resumed", "agent_paused"]
            assert client.get("/api/notifications?limit=0").status_code == 400
            assert services.gate is not None  # serving installs the budget gate
    finally:
        services.close()


def test_imported_usage_fills_budgets_and_agrees_with_costs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Usage that never met the gate (an import) counts, and `budget` agrees with `costs` for today."""
    from datetime import UTC, datetime, timedelta

    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(CONFIG + "  per_backend:\n    claude: 20.00/month\n")
    db = f"sqlite:///{tmp_path / 'l.db'}"
    now = datetime.now(UTC)
    lines = [
        {
            "timestamp": (now - timedelta(seconds=5 + i)).isoformat(),
            "backend": "claude",
            "model": "m",
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "cost_usd": usd,
            "agent": agent,
        }
        for i, (usd, agent) in enumerate([(1.5, "coder"), (0.75, "coder"), (0.1, "planner")])
    ]
    usage = tmp_path / "u.jsonl"
    usage.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert run(capsys, "import", str(usage), "--config", str(cfg), "--db", db)[0] == 0
    code, out, _ = run(capsys, "costs", "--since", "today", "--config", str(cfg), "--db", db, "--json")
    assert code == 0
    total = Decimal(json.loads(out)["total"]["cost_usd"])
    code, out, _ = run(capsys, "budget", "--config", str(cfg), "--db", db, "--json")
    assert code == 0
    rows = {(b["name"], b["value"]): b for b in json.loads(out)["budgets"]}
    assert Decimal(rows[("daily", None)]["spent"]) == total == Decimal("2.35")
    assert Decimal(rows[("backend:claude/month", "claude")]["spent"]) == Decimal("2.35")
    # the per-agent token budget lists agents seen only in the ledger, with their tokens
    assert rows[("agent:each:day", "coder")]["spent"] == 220
    assert rows[("agent:each:day", "planner")]["spent"] == 110
    # and the text table shows the same spend
    code, out, _ = run(capsys, "budget", "--config", str(cfg), "--db", db)
    assert code == 0 and "$2.35" in out
