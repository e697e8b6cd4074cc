"""`llmbudget analyze` and the Claude Code import shell, end to end over a real SQLite ledger, fixed clock."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmbudget.cli import main
from llmbudget.config import data_dir
from llmbudget.quota.readings import QuotaReading, Window
from llmbudget.quota.readings_log import store_reading
from llmbudget.store import open_ledger

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
NOW_S = "2026-11-20T15:30:00Z"
H = timedelta(hours=1)
FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"


def rd(backend: str, at: datetime, u5: float, u7: float, status: str = "allowed") -> QuotaReading:
    return QuotaReading(
        timestamp=at,
        backend=backend,
        provider="anthropic-unified",
        status=status,
        windows={
            "5h": Window(u5, datetime(2026, 11, 20, 17, tzinfo=UTC)),
            "7d": Window(u7, datetime(2026, 11, 22, 9, tzinfo=UTC)),
        },
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, audit=False) as ledger:
        for i in range(5):  # "seat-a": 7d grows 2 points an hour, 5h barely used
            store_reading(ledger, rd("seat-a", NOW - (4 - i) * H, 0.10 + 0.05 * i, 0.50 + 0.02 * i))
        store_reading(ledger, rd("seat-b", NOW - 2 * H, 1.0, 0.97, status="rejected"))
        # forty days ago: past the retention period
        store_reading(ledger, rd("seat-a", NOW - 40 * 24 * H, 0.2, 0.2))
    return url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_all_sections_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "analyze", "--json", "--db", db, "--now", NOW_S)
    assert code == 0
    data = json.loads(out)
    assert {"burn_rate", "weekly", "stagger", "rotation", "underspend", "blocks"} <= set(data)
    assert data["readings"] == 6  # the 40-day-old reading is outside --since 30d
    seven = next(r for r in data["burn_rate"] if r["backend"] == "seat-a" and r["window"] == "7d")
    assert seven["per_hour_pct"] == pytest.approx(2.0)
    assert seven["exhaustion"] == "2026-11-21T12:30:00Z"  # 42 points left at 2 an hour
    assert seven["exhausts_before_reset"] is True
    assert [r["backend"] for r in data["rotation"]] == ["seat-a", "seat-b"]
    assert [(r["backend"], r["window"]) for r in data["stagger"]][:2] == [("seat-a", "5h"), ("seat-b", "5h")]
    # seat-a: 70% of the 5h window unused, 1h30 to the 17:00 reset
    assert [u["backend"] for u in data["underspend"]] == ["seat-a"]
    week = next(w for w in data["weekly"] if w["backend"] == "seat-b")
    assert week["exhaustions"][0]["reason"].startswith("rejected")


def test_one_section_and_provider_filter(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "analyze", "--stagger", "--provider", "seat-b", "--json", "--db", db, "--now", NOW_S
    )
    assert code == 0
    data = json.loads(out)
    assert "burn_rate" not in data and "blocks" not in data
    assert {r["backend"] for r in data["stagger"]} == {"seat-b"}


def test_tables(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "analyze", "--db", db, "--now", NOW_S)
    assert code == 0
    for title in ("Burn rate", "Weekly 7d utilization", "Resets in the next 48 h", "Rotation"):
        assert title in out
    assert "use it or lose it: 70% of seat-a's 5h window unused, resets in 1h30m" in out


def test_corrupted_log_line_is_reported_with_file_and_line(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = data_dir() / "quota" / "readings-2026-11-20.jsonl"
    lines = log.read_text().splitlines()
    lines.insert(2, '{"timestamp": "2026-11-20T12:00:00Z", "backend": ')
    log.write_text("\n".join(lines) + "\n")
    code, out, _ = run(capsys, "analyze", "--burn-rate", "--from-log", "--json", "--db", db, "--now", NOW_S)
    assert code == 0
    data = json.loads(out)
    assert data["readings"] == 6
    assert any(f"file={log} line=3" in w for w in data["warnings"])


def test_prune_dry_run_then_archive(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "analyze", "--prune", "--dry-run", "--json", "--db", db, "--now", NOW_S)
    assert code == 0
    dry = json.loads(out)["prune"]
    old_log = data_dir() / "quota" / "readings-2026-10-11.jsonl"
    assert dry["ledger_readings"] == 1 and dry["log_files"] == [str(old_log)] and dry["archives"] == []
    assert old_log.exists()
    code, out, _ = run(capsys, "analyze", "--prune", "--db", db, "--now", NOW_S)
    assert code == 0 and "removed 1 ledger readings and 1 log readings in 1 daily files" in out
    assert not old_log.exists()
    archives = sorted((data_dir() / "quota" / "archive").iterdir())
    assert [a.name for a in archives] == [
        "ledger-readings-20261120T153000Z.jsonl.gz",
        "readings-2026-10-11.jsonl.gz",
    ]
    with gzip.open(archives[0], "rt") as fh:
        (row,) = [json.loads(line) for line in fh]
    assert row["backend"] == "seat-a" and row["timestamp"].startswith("2026-10-11")
    with open_ledger(db, audit=False) as ledger:
        assert len(ledger.readings()) == 6


def test_prune_uses_configured_retention(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text("quota:\n  retention_days: 60\n")
    code, out, _ = run(
        capsys, "analyze", "--prune", "--dry-run", "--json", "--db", db, "--config", str(cfg), "--now", NOW_S
    )
    assert code == 0 and json.loads(out)["prune"]["ledger_readings"] == 0
    code, out, _ = run(
        capsys, "analyze", "--prune", "--dry-run", "--older-than", "2h", "--json", "--db", db, "--now", NOW_S
    )
    assert json.loads(out)["prune"]["ledger_readings"] == 3  # the 40-day-old one and seat-a at -4 h and -3 h
    cfg.write_text("quota:\n  retention_days: zero\n")
    code, _, err = run(capsys, "analyze", "--prune", "--db", db, "--config", str(cfg), "--now", NOW_S)
    assert code == 1 and "quota.retention_days" in err


def test_an_unknown_provider_is_named_with_the_known_accounts(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "analyze", "--burn-rate", "--provider", "seat-z", "--db", db, "--now", NOW_S)
    assert code == 0 and "nothing to show" in out
    assert "no readings of an account or kind named 'seat-z'" in err and "accounts: seat-a, seat-b" in err


def test_dry_run_needs_prune(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "analyze", "--dry-run", "--db", db)
    assert code == 1 and "--prune" in err


def test_blocks_after_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cc.db'}"
    code, out, _ = run(capsys, "import", "claude-code", str(FIXTURES), "--json", "--db", url)
    assert code == 0
    first = json.loads(out)
    assert first["new"] == 9 and len(first["warnings"]) == 2
    code, out, err = run(capsys, "import", "claude-code", str(FIXTURES), "--db", url)
    assert code == 0
    assert "Imported 0 new Claude Code responses (9 already imported)" in out
    assert err.count("skipped: not valid JSON") == 2  # each bad line named once, with file and line
    assert f"{FIXTURES}/projects/-home-alice-code-webapp/7d2e4b90-93c1-4f8e-8a0e-5c1f2d9e6b02.jsonl:6:" in err
    code, out, _ = run(
        capsys, "analyze", "--blocks", "--json", "--db", url, "--since", "2026-11-01", "--now", NOW_S
    )
    assert code == 0
    blocks = json.loads(out)["blocks"]
    active = [b for b in blocks if b["is_active"]]
    assert len(active) == 1 and active[0]["start"] == "2026-11-20T14:00:00Z"
    assert active[0]["burn_rate"]["tokens_per_minute"] == pytest.approx(62.0)
    assert active[0]["unpriced_entries"] == 1  # claude-fable-9
    code, out, _ = run(capsys, "analyze", "--blocks", "--db", url, "--since", "2026-11-01", "--now", NOW_S)
    assert "ACTIVE" in out and "Burn rate: 62 tokens/min" in out


def test_blocks_straight_from_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "analyze",
        "--blocks",
        "--logs",
        str(FIXTURES),
        "--json",
        "--since",
        "2026-11-01",
        "--now",
        NOW_S,
    )
    assert code == 0
    data = json.loads(out)
    assert sum(b["entries"] for b in data["blocks"]) == 9
    assert len(data["warnings"]) == 2


def test_rotation_includes_configured_accounts_without_readings(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text("providers:\n  - {name: seat-c, kind: anthropic-unified, api_key_env: SEAT_C_KEY}\n")
    code, out, _ = run(
        capsys, "analyze", "--rotation", "--json", "--db", db, "--config", str(cfg), "--now", NOW_S
    )
    assert code == 0
    ranked = json.loads(out)["rotation"]
    assert [(r["backend"], r["severity"]) for r in ranked] == [
        ("seat-a", "OK"),
        ("seat-c", "UNKNOWN"),
        ("seat-b", "CRITICAL"),
    ]


def test_import_claude_code_default_location_and_missing_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cc.db'}"
    code, _, err = run(capsys, "import", "claude-code", "--db", url)
    assert code == 1 and "no Claude Code logs found" in err
    code, _, err = run(capsys, "import", "claude-code", str(tmp_path / "nope"), "--db", url)
    assert code == 1 and "nope: no such file or directory" in err
    shutil.copytree(FIXTURES / "projects", Path.home() / ".claude" / "projects")
    code, out, _ = run(capsys, "import", "claude-code", "--json", "--db", url)
    assert code == 0 and json.loads(out)["new"] == 9


def test_analyze_csv_has_a_section_column(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    import csv
    import io

    code, out, _ = run(capsys, "analyze", "--csv", "--burn-rate", "--rotation", "--db", db, "--now", NOW_S)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["section"] for r in rows} == {"burn_rate", "rotation"}
    assert {r["backend"] for r in rows if r["section"] == "rotation"} >= {"seat-a", "seat-b"}
    code, _, err = run(capsys, "analyze", "--csv", "--json", "--db", db, "--now", NOW_S)
    assert code == 1 and "choose one of --json and --csv" in err
