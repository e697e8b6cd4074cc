"""What the CLI shows is what is stored: names with brackets stay whole, money keeps its value,
CSV has plain decimals, and every tabular report has --json and --csv."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from llmbudget.cli import common, main
from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger

NOW = datetime.now(UTC)
#: names a user can choose that Rich would otherwise read as style tags
ODD_AGENT = "[bold]planner[/bold]"
ODD_MODEL = "llama[7b]-q4"
ODD_SESSION = "sess-[red]1"


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'display.db'}"
    with open_ledger(url) as led:
        led.record_many(
            [
                UsageEvent(
                    backend="local",
                    model=ODD_MODEL,
                    timestamp=NOW - timedelta(minutes=i),
                    input_tokens=10,
                    output_tokens=1,
                    cost_usd=Decimal("0.000000001") if i == 0 else Decimal(0),
                    price_status="priced",
                    agent=ODD_AGENT,
                    session=ODD_SESSION,
                )
                for i in range(2)
            ]
        )
    return url


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common.console, "width", 200)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["events"], [ODD_AGENT, ODD_MODEL, ODD_SESSION]),
        (["costs", "--by", "agent"], [ODD_AGENT]),
        (["costs", "--by", "model"], [ODD_MODEL]),
        (["sessions"], [ODD_SESSION, ODD_AGENT]),
        (["prices", "--missing"], []),
    ],
)
def test_names_with_brackets_are_printed_whole(
    db: str, capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    code, out, err = run(capsys, *args, "--db", db)
    assert code == 0, err
    for n in needles:
        assert n in out, out


def test_a_budget_and_a_paused_agent_with_brackets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text("budgets:\n  limits:\n    - {limit_usd: 1, period: day, name: 'team[a]'}\n")
    db = f"sqlite:///{tmp_path / 'b.db'}"
    code, _, err = run(
        capsys, "agents", "pause", "[red]bot", "--reason", "[b]loop[/b]", "--db", db, "--config", str(cfg)
    )
    assert code == 0, err
    code, out, err = run(capsys, "budget", "--db", db, "--config", str(cfg))
    assert code == 0, err
    assert "team[a]" in out
    assert "[red]bot: [b]loop[/b]" in out
    code, out, err = run(capsys, "agents", "list", "--db", db, "--config", str(cfg))
    assert "[red]bot" in out and "[b]loop[/b]" in out


def _csv(out: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(out)))


def test_csv_money_is_plain_decimals(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A zero or one-nano cost is `0.000000000` / `0.000000001` in CSV, as in JSON, never `0E-9`."""
    code, out, _ = run(capsys, "events", "--csv", "--db", db)
    assert code == 0
    assert sorted(r["cost_usd"] for r in _csv(out)) == ["0.000000000", "0.000000001"]
    assert "E-" not in out
    for args in (["costs", "--by", "agent"], ["sessions"], ["export"]):
        code, out, _ = run(capsys, *args, "--csv", "--db", db)
        assert code == 0 and "E-" not in out, out
    code, out, _ = run(capsys, "events", "--json", "--db", db)
    assert {e["cost_usd"] for e in json.loads(out)["events"]} == {"0.000000000", "0.000000001"}


def test_write_rows_csv_never_writes_an_exponent() -> None:
    from llmbudget.export import write_rows_csv

    buf = io.StringIO()
    write_rows_csv([{"a": Decimal("0E-9"), "b": Decimal("1E-9"), "c": Decimal("12.5"), "d": 3}], "abcd", buf)
    assert buf.getvalue().splitlines()[1] == "0.000000000,0.000000001,12.5,3"


@pytest.fixture
def budget_cfg(tmp_path: Path) -> tuple[str, str]:
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text(
        "budgets:\n  hard_stop: false\n  limits:\n    - {name: '=tiny', limit_usd: 0.001, period: day}\n"
    )
    return str(cfg), f"sqlite:///{tmp_path / 'b.db'}"


def test_budget_table_json_and_csv_show_a_sub_cent_limit(
    budget_cfg: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = budget_cfg
    code, out, _ = run(capsys, "budget", "--config", cfg, "--db", db)
    assert code == 0 and "$0.001" in out and "<$" not in out
    code, out, _ = run(capsys, "budget", "--csv", "--config", cfg, "--db", db)
    assert code == 0
    (row,) = _csv(out)
    assert row["name"] == "'=tiny"  # formula-safe, like every CSV
    assert (row["limit"], row["spent"], row["status"]) == ("0.001", "0", "ok")
    code, _, err = run(capsys, "budget", "--csv", "--json", "--config", cfg, "--db", db)
    assert code == 1 and "choose one of --json and --csv" in err


def test_alerts_csv(budget_cfg: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = budget_cfg
    assert run(capsys, "agents", "pause", "bot", "--reason", "+loop", "--config", cfg, "--db", db)[0] == 0
    code, out, _ = run(capsys, "alerts", "--csv", "--config", cfg, "--db", db)
    assert code == 0
    rows = _csv(out)
    assert rows and rows[0]["kind"] == "agent_paused"
    assert set(rows[0]) >= {"timestamp", "kind", "message", "limit_usd"}
    code, out, _ = run(capsys, "alerts", "--config", cfg, "--db", db)
    assert "agent_paused" in out
    code, out, _ = run(capsys, "agents", "list", "--csv", "--config", cfg, "--db", db)
    assert code == 0
    assert [(r["agent"], r["reason"], r["by"]) for r in _csv(out)] == [("bot", "'+loop", "cli")]


#: commands that do something and report on what they did, not tabular reports
ACTION_WORDS = {
    "create",
    "revoke",
    "pause",
    "resume",
    "migrate",
    "check",
    "show",
    "import",
    "reprice",
    "serve",
    "run",
}


def test_every_report_with_json_has_csv() -> None:
    """A tabular report offers both; only actions (`keys create`, `db migrate`, ...) have --json alone."""
    from test_cli_errors import LEAVES, _params

    missing = []
    for path in LEAVES:
        opts = {o for p in _params(path) for o in getattr(p, "opts", [])}
        if "--json" in opts and "--csv" not in opts and not ACTION_WORDS & set(path):
            missing.append(" ".join(path))
    assert not missing, f"--json without --csv: {missing}"


def test_budget_without_budgets_still_shows_paused_agents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    assert run(capsys, "agents", "pause", "[red]bot", "--db", db)[0] == 0
    code, out, _ = run(capsys, "budget", "--db", db)
    assert code == 0 and "No budgets configured" in out
    assert "paused agent [red]bot" in out and "llmbudget agents resume [red]bot" in out


def test_reprice_json_money_is_a_plain_decimal(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "reprice", "--dry-run", "--json", "--db", db)
    assert code == 0, err
    assert json.loads(out)["cost_delta_usd"] == "0.000000000"
