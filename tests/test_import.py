"""`llmbudget import FILE.jsonl`: both line shapes, bad lines, idempotence, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmbudget.cli import main
from llmbudget.errors import NotFound
from llmbudget.events import UsageEvent
from llmbudget.importer import import_jsonl, line_id
from llmbudget.pricing import PriceBook
from llmbudget.store import open_ledger

LOGGED = {
    "timestamp": "2026-03-01T12:00:00Z",
    "backend": "openai",
    "model": "gpt-4o",
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "cost_usd": 0.0042,
    "task_id": "T-1",
    "task_type": "code",
    "duration_ms": 850,
}


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8"
    )
    return path


def test_logged_shape_and_our_shape(ledger_url: str, tmp_path: Path) -> None:
    ours = UsageEvent(
        backend="anthropic",
        model="claude-sonnet-4-5",
        provider="anthropic",
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal("0.000105"),
        price_status="priced",
        agent="bot",
        timestamp=datetime(2026, 3, 1, 13, tzinfo=UTC),
        tags={"k": "v"},
        source="proxy",
    )
    f = _write(tmp_path / "usage.jsonl", [LOGGED, ours.to_dict()])
    with open_ledger(ledger_url) as led:
        res = import_jsonl(led, f)
        assert (res.loaded, res.duplicates, res.bad) == (2, 0, [])
        got = led.get(ours.id)
        assert got is not None and got.cost_usd == ours.cost_usd
        assert {**got.to_dict(), "cost_usd": None} == {**ours.to_dict(), "cost_usd": None}
        [logged] = led.query(filters={"task_id": "T-1"})
        assert logged.id == line_id(json.dumps(LOGGED).encode())
        assert (logged.input_tokens, logged.output_tokens) == (1000, 200)
        assert logged.cost_usd == Decimal("0.0042") and logged.price_status == "priced"
        assert (logged.source, logged.task_type, logged.duration_ms) == ("import", "code", 850.0)
        assert logged.timestamp == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_bad_lines_are_reported_by_number_and_field_and_skipped(tmp_path: Path) -> None:
    lines: list[Any] = [
        LOGGED,
        "{not json",
        {**LOGGED, "timestamp": "2026-03-01T12:00:01Z", "prompt_tokens": -3},
        {**LOGGED, "timestamp": "yesterday-ish"},
        {**LOGGED, "timestamp": "2026-03-01T12:00:02Z", "cost_usd": "a lot"},
        {k: v for k, v in LOGGED.items() if k != "model"},
        [1, 2, 3],
        "",
        {**LOGGED, "timestamp": "2026-03-01T12:00:03Z", "completion_tokens": 7.5},
        {"backend": "b", "model": "m", "input_tokens": 5, "cached_input_tokens": 9},
        {**LOGGED, "timestamp": "2026-03-01T12:00:04Z"},
    ]
    f = _write(tmp_path / "bad.jsonl", lines)
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as led:
        res = import_jsonl(led, f)
    bad = {b.line: b for b in res.bad}
    assert set(bad) == {2, 3, 4, 5, 6, 7, 9, 10}
    assert bad[3].field == "prompt_tokens" and "negative" in bad[3].message
    assert bad[4].field == "timestamp"
    assert bad[5].field == "cost_usd"
    assert bad[6].field == "model"
    assert bad[9].field == "completion_tokens"
    assert bad[10].field == "cached_input_tokens"
    assert "JSON" in bad[2].message and "object" in bad[7].message
    assert res.loaded == 2 and res.lines == 10


def test_reimport_adds_nothing_and_repeats_in_a_file_count_once(ledger_url: str, tmp_path: Path) -> None:
    f = _write(tmp_path / "u.jsonl", [LOGGED, LOGGED, {**LOGGED, "timestamp": "2026-03-02T00:00:00Z"}])
    with open_ledger(ledger_url) as led:
        first = import_jsonl(led, f)
        assert (first.loaded, first.duplicates) == (2, 1)
        again = import_jsonl(led, f)
        assert (again.loaded, again.duplicates) == (0, 3)
        assert led.count() == 2
        (total,) = led.costs(since=None, until=None)
        assert total.cost_nano == 2 * 4_200_000


def test_missing_cost_is_priced_with_the_book_or_left_unpriced(tmp_path: Path) -> None:
    no_cost = {k: v for k, v in LOGGED.items() if k != "cost_usd"}
    unknown = {**no_cost, "model": "no-such-model-xyz", "timestamp": "2026-03-01T12:05:00Z"}
    f = _write(tmp_path / "u.jsonl", [no_cost, unknown])
    book = PriceBook()
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as led:
        res = import_jsonl(led, f, prices=book, provider_of=lambda backend, model: "openai")
        assert res.unpriced == 1
        events = {e.model: e for e in led.query()}
    expected = book.price_event(
        UsageEvent(
            backend="openai",
            model="gpt-4o",
            provider="openai",
            input_tokens=1000,
            output_tokens=200,
            timestamp=datetime(2026, 3, 1, 12, tzinfo=UTC),
        )
    )
    assert expected.cost_usd is not None and expected.cost_usd > 0
    assert events["gpt-4o"].cost_usd == expected.cost_usd
    assert events["no-such-model-xyz"].cost_usd is None
    assert events["no-such-model-xyz"].price_status == "unpriced"


def test_missing_file(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as led, pytest.raises(NotFound, match=r"nope\.jsonl"):
        import_jsonl(led, tmp_path / "nope.jsonl")


def test_cli_import_json_summary_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _write(tmp_path / "u.jsonl", [LOGGED, "oops", {**LOGGED, "timestamp": "2026-03-03T00:00:00Z"}])
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["import", str(f), "--db", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["loaded"], out["duplicates"], out["bad_lines"]) == (2, 0, 1)
    assert out["errors"][0]["line"] == 2
    assert main(["import", str(f), "--db", db]) == 0
    cap = capsys.readouterr()
    assert "loaded 0 events of 3 lines (skipped 2 duplicates, 1 bad line)" in " ".join(cap.out.split())
    assert "line 2" in cap.err
    assert main(["import", str(tmp_path / "missing.jsonl"), "--db", db]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


def test_cli_import_summary_never_shows_unpriced_as_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = {**LOGGED, "model": "no-such-model-xyz", "cost_usd": None}
    f = _write(tmp_path / "u.jsonl", [unknown])
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["import", str(f), "--db", db]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 unpriced call in the file, cost unknown" in out and "$0" not in out
    assert main(["import", str(f), "--db", db, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cost_usd"] is None and summary["unpriced"] == 1


def test_cli_import_claude_code_dispatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "projects"
    logs.mkdir()
    db = f"sqlite:///{tmp_path / 'cc.db'}"
    assert main(["import", "claude-code", str(logs), "--db", db, "--json"]) == 0
    assert "new" in json.loads(capsys.readouterr().out)


def test_cli_db_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmbudget.store.migrations import MIGRATIONS

    db = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["db", "migrate", "--db", db, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in first["migrations"]] == [m.name for m in MIGRATIONS["sqlite"]]
    assert all(m["applied_now"] for m in first["migrations"])
    assert main(["db", "migrate", "--db", db]) == 0
    assert "0 applied now" in capsys.readouterr().out
