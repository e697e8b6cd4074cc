"""`llmbudget monitor` in-process against fake provider servers, with a real SQLite ledger."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from quota_fakes import FakeProviders, fake_providers

from llmbudget.cli import main
from llmbudget.quota.readings_log import read_log
from llmbudget.store import open_ledger


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    with fake_providers() as f:
        yield f


@pytest.fixture
def setup(fake: FakeProviders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("FAKE_KEY", "sk-test-123456789")
    # the shared console may have been created by an earlier test at another width
    from llmbudget.cli import common

    monkeypatch.setattr(common.console, "width", 250)
    accounts = [
        ("max-1", "anthropic-unified", "unified-ok"),
        ("max-2", "anthropic-unified", "unified-rejected"),
        ("gpt", "openai", "openai-ok"),
        ("grok", "xai", "xai-minus1"),
        ("gem", "gemini", "gemini-429"),
        ("or", "openrouter", "openrouter-ok"),
        ("dead", "anthropic-api", "invalid-401"),
        ("slow", "openai", "hang"),
        ("blank", "anthropic-api", "no-headers"),
    ]
    lines = ["providers:"]
    for name, kind, scenario in accounts:
        timeout = 0.5 if scenario == "hang" else 5
        lines.append(
            f"  - {{name: {name}, kind: {kind}, base_url: '{fake.url(scenario)}', "
            f"api_key_env: FAKE_KEY, probe_timeout_s: {timeout}}}"
        )
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg, f"sqlite:///{tmp_path / 'l.db'}"


def test_monitor_table_overall_and_exit_code(
    setup: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = setup
    code = main(["monitor", "--config", str(cfg), "--db", db])
    out = capsys.readouterr().out
    assert code == 2  # a CRITICAL account
    last = out.strip().splitlines()[-1]
    assert last == "Overall: 3 CRITICAL, 4 OK, 2 UNKNOWN"
    for name in ("max-1", "max-2", "gpt", "grok", "gem", "or", "dead", "slow", "blank"):
        assert name in out
    assert "42%" in out and "timed out after 0.5s" in out and "INVALID" in out
    assert "GenerateRequestsPerDayPerProjectPerModel-FreeTier" in out and "retry in 43s" in out


def test_monitor_json_and_storage(
    setup: tuple[Path, str], capsys: pytest.CaptureFixture[str], hermetic_env: Path
) -> None:
    cfg, db = setup
    code = main(["monitor", "--json", "--config", str(cfg), "--db", db])
    data = json.loads(capsys.readouterr().out)
    assert code == 2
    by = {a["account"]: a for a in data["accounts"]}
    assert data["counts"] == {"CRITICAL": 3, "WARNING": 0, "OK": 4, "UNKNOWN": 2}
    assert by["max-1"]["reading"]["windows"]["5h"]["utilization"] == pytest.approx(0.42)
    assert by["dead"]["blocker"] == "invalid_key" and by["dead"]["reading"]["key_valid"] is False
    assert by["gem"]["reading"]["retry_delay_s"] == 43
    # one reason for Gemini's refusal: the violated quota and its limit (not also a bare "HTTP 429")
    assert by["gem"]["reasons"] == [
        "quota exceeded: GenerateRequestsPerDayPerProjectPerModel-FreeTier (limit 1000)"
    ]
    assert by["or"]["reading"]["credit_usd"] == "15.5"
    assert by["slow"]["reasons"] == ["timed out after 0.5s"]
    assert by["blank"]["severity"] == "UNKNOWN" and "no rate-limit headers" in by["blank"]["reasons"][0]
    # stored: ledger and the daily JSONL log
    ledger = open_ledger(db)
    try:
        latest = ledger.latest_readings()
    finally:
        ledger.close()
    assert set(latest) == set(by)
    assert latest["max-2"]["status"] == "rejected" and latest["max-2"]["source"] == "probe"
    logged = read_log(hermetic_env / "data" / "quota")
    assert sorted(r.backend for r in logged) == sorted(by)
    assert "sk-test-123456789" not in json.dumps(data)


def test_monitor_one_provider_no_log(
    setup: tuple[Path, str], capsys: pytest.CaptureFixture[str], hermetic_env: Path
) -> None:
    cfg, db = setup
    code = main(
        [
            "monitor",
            "--provider",
            "gpt",
            "--provider",
            "grok",
            "--no-log",
            "--json",
            "--config",
            str(cfg),
            "--db",
            db,
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [a["account"] for a in data["accounts"]] == ["gpt", "grok"]
    assert data["overall"] == "Overall: 2 OK"
    assert not (hermetic_env / "data" / "quota").exists()
    assert not (Path(db.removeprefix("sqlite:///"))).exists()


def test_monitor_unknown_provider_and_no_providers(
    setup: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _db = setup
    assert main(["monitor", "--provider", "nope", "--no-log", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "no provider named nope" in err and "max-1" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("timezone: UTC\n")
    assert main(["monitor", "--no-log", "--config", str(empty)]) == 1
    assert "no providers configured" in capsys.readouterr().err


def test_monitor_bad_config_names_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  - name: a\n    kind: claude\n")
    assert main(["monitor", "--no-log", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and "unknown provider kind 'claude'" in err


def test_monitor_uses_the_configured_warn_at(
    setup: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _db = setup
    assert main(["monitor", "--provider", "max-1", "--no-log", "--json", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == "Overall: 1 OK"
    # max-1's 7d window is at 50%: WARNING once the threshold is 0.5
    cfg.write_text(cfg.read_text() + "quota:\n  warn_at: 0.5\n")
    assert main(["monitor", "--provider", "max-1", "--no-log", "--json", "--config", str(cfg)]) == 0
    (acct,) = json.loads(capsys.readouterr().out)["accounts"]
    assert acct["severity"] == "WARNING" and "7d window at 50%" in acct["reasons"]


def test_monitor_on_a_narrow_terminal_prints_one_block_per_account(
    setup: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmbudget.cli import common

    cfg, _db = setup
    monkeypatch.setattr(common.console, "width", 80)
    assert (
        main(
            [
                "monitor",
                "--provider",
                "max-1",
                "--provider",
                "dead",
                "--provider",
                "slow",
                "--no-log",
                "--config",
                str(cfg),
            ]
        )
        == 2
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["OK", "max-1", "anthropic-unified"]
    assert re.fullmatch(r"5h 42% \(\dh\d\dm\) · 7d 50% \(2d23h\) · key valid", lines[1].strip()), lines[1]
    assert lines[2].split()[:2] == ["CRITICAL", "dead"] and "key INVALID" in lines[3]
    assert ["UNKNOWN", "slow", "openai"] in [line.split() for line in lines]
    assert "timed out after 0.5s" in lines[-2] and lines[-1] == "Overall: 1 CRITICAL, 1 OK, 1 UNKNOWN"


def test_monitor_csv_is_one_row_per_account(
    setup: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import io

    cfg, db = setup
    code = main(["monitor", "--csv", "--no-log", "--config", str(cfg), "--db", db])
    assert code == 2  # CSV or not, a CRITICAL account is exit 2
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by = {r["account"]: r for r in rows}
    assert len(rows) == 9 and by["dead"]["severity"] == "CRITICAL"
    assert float(by["max-1"]["reading.windows.5h.utilization"]) == pytest.approx(0.42)
    assert main(["monitor", "--csv", "--json", "--no-log", "--config", str(cfg)]) == 1
