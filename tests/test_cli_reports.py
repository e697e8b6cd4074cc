"""The report commands end to end through the real entry point: tables, --json, --csv, export, config."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from llmbudget.cli import common, main
from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger

NOW = datetime.now(UTC)


def _events() -> list[UsageEvent]:
    evs = [
        UsageEvent(
            backend="openai",
            model="gpt-4o",
            timestamp=NOW - timedelta(minutes=i),
            input_tokens=1000,
            output_tokens=100 + i,
            cost_usd=Decimal("0.25"),
            price_status="priced",
            agent='=HYPERLINK("http://evil")' if i == 0 else "planner",
            session="sess-1",
            task_type="chat",
        )
        for i in range(4)
    ]
    evs.append(
        UsageEvent(
            backend="local",
            model="mystery-7b",
            timestamp=NOW - timedelta(minutes=10),
            input_tokens=50,
            output_tokens=5,
            agent="coder",
            session="sess-2",
            status="error",
        )
    )
    return evs


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with open_ledger(url) as led:
        led.record_many(_events())
    return url


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common.console, "width", 200)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_costs_overview_table(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "costs", "--db", db)
    assert code == 0
    assert "Today" in out and "This month" in out and "by backend" in out
    assert "openai" in out and "$1.0000" in out  # four calls at $0.25 (they are minutes old)
    local_line = next(line for line in out.splitlines() if "local" in line)
    assert "unpriced" in local_line and "$0" not in local_line  # a count beside, never $0


def test_costs_by_with_filters_and_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "costs", "--by", "agent", "--since", "1d", "--task-type", "chat", "--json", "--db", db
    )
    assert code == 0
    data = json.loads(out)
    assert data["by"] == "agent" and data["filters"] == {"task_type": "chat"}
    assert {r["key"]: r["calls"] for r in data["rows"]} == {"planner": 3, '=HYPERLINK("http://evil")': 1}
    code, out, _ = run(capsys, "costs", "--by", "task-type", "--since", "1d", "--db", db)
    assert code == 0 and "Task type" in out and "chat" in out and "Total" in out
    code, out, _ = run(capsys, "costs", "--by", "agent", "--since", "1d", "--limit", "1", "--db", db)
    assert code == 0 and "2 more rows not shown" in out and "coder" not in out


def test_costs_by_key_groups_by_the_virtual_key(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = ledger_url
    with open_ledger(url) as led:
        led.record_many(
            [
                UsageEvent(
                    backend="openai", model="gpt-4o", key=k, cost_usd=Decimal(c), price_status="priced"
                )
                for k, c in (("ci-bot", "0.5"), ("ci-bot", "0.25"), ("nightly", "0.1"), (None, "1"))
            ]
        )
    code, out, _ = run(capsys, "costs", "--by", "key", "--since", "1d", "--json", "--db", url)
    assert code == 0, out
    data = json.loads(out)
    assert data["by"] == "key"
    assert {r["key"]: (r["calls"], r["cost_usd"]) for r in data["rows"]} == {
        "ci-bot": (2, "0.750000000"),
        "nightly": (1, "0.100000000"),
        None: (1, "1.000000000"),
    }
    code, out, _ = run(capsys, "costs", "--by", "key", "--since", "1d", "--db", url)
    assert code == 0 and "Key" in out and "ci-bot" in out and "(none)" in out


def test_costs_csv_is_formula_safe(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "costs", "--by", "agent", "--since", "1d", "--csv", "--db", db)
    assert code == 0
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(out))}
    assert '\'=HYPERLINK("http://evil")' in rows
    assert rows["planner"]["calls"] == "3" and Decimal(rows["planner"]["cost_usd"]) == Decimal("0.75")
    assert rows["coder"]["cost_usd"] == ""  # unpriced: empty, not 0
    code, out, _ = run(capsys, "costs", "--csv", "--db", db)
    sections = [r["section"] for r in csv.DictReader(io.StringIO(out))]
    assert sections[:2] == ["today", "this_month"] and "backend" in sections


@pytest.mark.parametrize(
    "args, needle",
    [
        (["costs", "--by", "colour"], "--by"),
        (["costs", "--since", "the other day"], "--since"),
        (["costs", "--json", "--csv"], "--json"),
        (["events", "--limit", "0"], "--limit"),
        (["costs", "--by", "agent", "--limit", "0"], "--limit"),
        (["events", "--status", "weird"], "--status"),
        (["sessions", "--since", "whenever"], "--since"),
    ],
)
def test_bad_options_are_one_red_line(
    db: str, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, out, err = run(capsys, *args, "--db", db)
    assert code == 1
    assert out == ""
    assert err.startswith("error:") and needle in err
    assert "Traceback" not in err


def test_events_table_json_csv(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "events", "--limit", "3", "--db", db)
    assert code == 0 and "gpt-4o" in out
    code, out, _ = run(capsys, "events", "--status", "error", "--json", "--db", db)
    data = json.loads(out)
    assert [e["model"] for e in data["events"]] == ["mystery-7b"]
    code, out, _ = run(capsys, "events", "--csv", "--agent", "planner", "--db", db)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and all(r["agent"] == "planner" for r in rows)
    assert rows[0]["timestamp"] > rows[-1]["timestamp"]  # newest first


def test_sessions_table(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sessions", "--db", db)
    assert code == 0
    for header in ("Session ID", "Start", "End", "Tokens", "Cost", "Agents"):
        assert header in out
    assert "sess-1" in out and "sess-2" in out and "planner" in out
    code, out, _ = run(capsys, "sessions", "--csv", "--db", db)
    rows = {r["session"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["sess-2"]["cost_usd"] == "" and rows["sess-2"]["unpriced_calls"] == "1"
    assert rows["sess-1"]["agents"] == '\'=HYPERLINK("http://evil");planner'


def test_export_csv_and_json_to_stdout(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "export", "--csv", "--db", db)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 5
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)  # oldest first
    assert rows[-1]["agent"].startswith("'=")
    code, out, _ = run(capsys, "export", "--json", "--backend", "openai", "--db", db)
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4 and {e["backend"] for e in lines} == {"openai"}
    assert [UsageEvent.from_dict(e).cost_usd for e in lines] == [Decimal("0.25")] * 4
    code, out, _ = run(capsys, "export", "--json", "--array", "--since", "1d", "--db", db)
    assert len(json.loads(out)) == 5


def test_export_to_file(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.csv"
    code, out, err = run(capsys, "export", "--csv", "--output", str(target), "--db", db)
    assert code == 0 and out == ""
    assert "exported 5 events" in err
    with target.open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["export"], "--csv"),
        (["export", "--csv", "--json"], "--csv"),
        (["export", "--csv", "--array"], "--array"),
        (["export", "--csv", "--output", "/nonexistent-dir/x.csv"], "--output"),
    ],
)
def test_export_bad_options(
    db: str, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, out, err = run(capsys, *args, "--db", db)
    assert code == 1 and out == ""
    assert needle in err


def test_export_progress_goes_to_stderr_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    n = 3000
    with open_ledger(url) as led:
        led.record_many(
            [
                UsageEvent(
                    backend="openai",
                    model="gpt-4o",
                    input_tokens=1,
                    agent=f"a{i}",
                    timestamp=NOW - timedelta(seconds=i),
                )
                for i in range(n)
            ]
        )
    err_buf = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=err_buf, force_terminal=True, width=100))

    class Immediate(common.LateProgress):
        def __init__(self, label: str, total: int | None = None, **kw: Any) -> None:
            super().__init__(
                label, total, **{**kw, "delay": 0.0}
            )  # as if the export had run for over a second

    monkeypatch.setattr(common, "LateProgress", Immediate)
    code, out, _ = run(capsys, "export", "--csv", "--db", url)
    assert code == 0
    assert len(list(csv.DictReader(io.StringIO(out)))) == n  # stdout is the CSV and nothing else
    assert "exporting" in err_buf.getvalue()  # the bar was drawn, on the error console


def test_progress_stays_hidden_for_quick_or_piped_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "err_console", Console(file=io.StringIO(), force_terminal=False))
    p = common.LateProgress("exporting", 10_000, delay=0.0, check_every=1024)
    for i in range(1, 5000):
        p(i)
    assert p._bar is None  # stderr is not a terminal
    monkeypatch.setattr(common, "err_console", Console(file=io.StringIO(), force_terminal=True))
    p = common.LateProgress("exporting", 10_000, delay=3600, check_every=1024)
    for i in range(1, 5000):
        p(i)
    assert p._bar is None  # not yet a second (here: an hour) into the job
    p.close()


# ---------------------------------------------------------------------- config check / show


@pytest.fixture
def cfg_file(tmp_path: Path) -> Iterator[Path]:
    p = tmp_path / "llmbudget.yaml"
    p.write_text(
        "timezone: Europe/Berlin\n"
        "backends:\n"
        "  openai: {kind: openai, base_url: https://api.openai.com, api_key_env: OPENAI_API_KEY}\n"
        "storage:\n"
        "  url: postgresql://bob:hunter2@db.internal:5432/llm\n"
        "server:\n"
        "  admin_token_env: LLMB_ADMIN\n"
    )
    yield p


def test_config_show_masks_secrets(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    code, out, _ = run(capsys, "config", "show", "--config", str(cfg_file))
    assert code == 0
    assert "hunter2" not in out
    data: dict[str, Any] = yaml.safe_load(out)
    assert data["storage"]["url"] == "postgresql://bob:***@db.internal:5432/llm"
    assert data["backends"]["openai"]["api_key_env"] == "OPENAI_API_KEY"  # a variable's name, not a secret
    assert data["server"]["admin_token_env"] == "LLMB_ADMIN"
    assert data["server"]["port"] == 4141  # defaults are filled in
    assert out.startswith(f"# effective configuration from {cfg_file}")


def test_mask_secrets_rules() -> None:
    from llmbudget.cli.config_cmd import mask_secrets

    masked = mask_secrets(
        {
            "api_key": "sk-123",
            "Admin_Token": "t",
            "client_secret": "s",
            "password": "p",
            "api_key_env": "X_KEY",
            "nested": [{"private_key": "k", "name": "n"}],
            "hook": "https://hooks.slack.com/services/T/B/XYZ",
            "url": "https://h.example/x?key=abc&q=1",
            "none_key": None,
            "keys": ["a", "b"],
        }
    )
    assert (
        masked["api_key"] == masked["Admin_Token"] == masked["client_secret"] == masked["password"] == "***"
    )
    assert masked["api_key_env"] == "X_KEY"
    assert masked["nested"] == [{"private_key": "***", "name": "n"}]
    assert masked["hook"] == "https://hooks.slack.com/services/***"
    assert masked["url"] == "https://h.example/x?key=***&q=1"
    assert masked["none_key"] is None  # nothing to hide
    assert masked["keys"] == ["***", "***"]


def test_config_check(cfg_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "check", str(cfg_file))
    assert code == 0 and "is valid" in out and "1 backends" in out
    code, out, _ = run(capsys, "config", "check", str(cfg_file), "--json")
    assert json.loads(out)["backends"] == ["openai"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "timezone: UTC\nbackends:\n  local:\n    kind: olama\n    base_url: http://127.0.0.1:11434\n"
    )
    code, out, err = run(capsys, "config", "check", str(bad))
    assert code == 1
    assert f"{bad}:4" in err and "backends.local.kind" in err
    code, _, err = run(capsys, "config", "check", str(tmp_path / "missing.yaml"))
    assert code == 1 and "not found" in err


def test_config_check_without_a_file_uses_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "check")
    assert code == 0 and "defaults apply" in out


def test_a_mistyped_ledger_path_is_an_error_not_an_empty_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "typo.db"
    assert main(["costs", "--db", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"no ledger at {missing}" in err and "--db" in err
    assert not missing.exists() and not missing.parent.exists()


def test_a_database_url_the_ledger_cannot_hold_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--db", "redis://127.0.0.1:6379/0"]) == 1
    err = capsys.readouterr().err
    assert "unsupported database URL scheme 'redis'" in err and "postgresql://" in err
