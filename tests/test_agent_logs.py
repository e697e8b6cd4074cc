"""Agents' own logs: Codex CLI's rollout files, and following Claude Code and Codex logs live.

The Codex fixture (tests/fixtures/codex) follows the format in Codex's source: `RolloutLine`
`{timestamp, type, payload}` with `session_meta`, `turn_context`, `response_item` and
`event_msg` (`token_count` with `info.total_token_usage` / `last_token_usage`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmbudget.admission import CallInfo
from llmbudget.budget.factory import build_enforcer
from llmbudget.cli import main
from llmbudget.config import parse_config
from llmbudget.events import UsageEvent, anthropic_call_id
from llmbudget.pricing import PriceBook
from llmbudget.quota import codex
from llmbudget.quota.claude_code import CLAUDE_CODE
from llmbudget.quota.follow import LogFollower, files_under
from llmbudget.store import open_ledger

FIXTURE = Path(__file__).parent / "fixtures" / "codex"
S1 = "0199a213-81c0-7800-8aa1-bbab2a035a53"
LLMBUDGET = str(Path(sys.executable).with_name("llmbudget"))


def test_codex_fixture_import(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        res = codex.import_codex(ledger, [str(FIXTURE)], PriceBook())
        assert (res.files, res.calls, res.new, res.repeated, res.proxied) == (2, 2, 2, 1, 1)
        assert (
            len(res.warnings) == 1
            and "2026-11-20" in res.warnings[0]
            and ":13: skipped: not valid JSON" in res.warnings[0]
        )
        events = sorted(ledger.query(filters={"backend": "codex"}, limit=None), key=lambda e: e.timestamp)
        again = codex.import_codex(ledger, [str(FIXTURE)], PriceBook())
        assert (again.calls, again.new) == (2, 0)
    first, second = events
    assert (first.session, first.agent, first.source, first.provider, first.model) == (
        S1,
        "codex",
        "import",
        "openai",
        "gpt-5-codex",
    )
    assert (first.input_tokens, first.cached_input_tokens, first.output_tokens, first.reasoning_tokens) == (
        4200,
        3072,
        350,
        192,
    )
    assert (second.input_tokens, second.output_tokens) == (9100, 610)
    assert first.timestamp == datetime(2026, 11, 20, 9, 0, 9, 430000, tzinfo=UTC)
    assert first.tags == {
        "source_app": "codex",
        "project": "/home/alice/code/webapp",
        "codex_version": "0.172.0",
    }
    assert first.price_status == "priced" and first.cost_usd is not None and first.cost_usd > 0


def test_codex_home_and_running_totals_without_last_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "codexhome"
    day = home / "sessions" / "2026" / "11" / "22"
    day.mkdir(parents=True)

    def tc(total: int) -> str:
        usage = {
            "input_tokens": total,
            "cached_input_tokens": 0,
            "output_tokens": 10,
            "reasoning_output_tokens": 0,
        }
        return json.dumps(
            {
                "timestamp": f"2026-11-22T10:00:{total // 100:02d}Z",
                "type": "event_msg",
                "payload": {"type": "token_count", "info": {"total_token_usage": usage}},
            }
        )

    meta = json.dumps(
        {"timestamp": "2026-11-22T10:00:00Z", "type": "session_meta", "payload": {"id": "s-old"}}
    )
    (day / "rollout-old.jsonl").write_text("\n".join([meta, tc(100), tc(300)]) + "\n")
    monkeypatch.setenv("CODEX_HOME", str(home))
    scan = codex.read_logs(codex.find_log_files(None))
    assert [c.usage["input_tokens"] for c in scan.calls] == [100, 200]
    assert [c.model for c in scan.calls] == ["unknown", "unknown"]


def test_follower_holds_a_partial_line_and_sees_new_files(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"n": 1}\n{"n": ')
    follower = LogFollower(lambda: files_under([tmp_path]))
    assert [(ln.lineno, ln.text) for ln in follower.poll()] == [(1, '{"n": 1}')]
    assert follower.poll() == []
    with f.open("ab") as fh:
        fh.write(b'2}\n\n{"n": 3}\n')
    (tmp_path / "b.jsonl").write_text('{"b": 1}\n')
    got = [(ln.path.name, ln.lineno, ln.text) for ln in follower.poll()]
    assert got == [("a.jsonl", 2, '{"n": 2}'), ("a.jsonl", 4, '{"n": 3}'), ("b.jsonl", 1, '{"b": 1}')]
    f.write_text('{"n": 9}\n')  # rewritten shorter: read from the start again
    assert [ln.text for ln in follower.poll()] == ['{"n": 9}']


def _cc_line(msg_id: str, request_id: str, output: int, ts: str, session: str = "sess-1") -> str:
    return json.dumps(
        {
            "type": "assistant",
            "sessionId": session,
            "cwd": "/home/alice/code/webapp",
            "timestamp": ts,
            "requestId": request_id,
            "message": {
                "id": msg_id,
                "model": "claude-sonnet-4-5-20250929",
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 1000, "output_tokens": output},
            },
        }
    )


def test_claude_code_watcher_records_each_response_once_complete(tmp_path: Path) -> None:
    log = tmp_path / "projects" / "-home-alice-code-webapp" / "sess-1.jsonl"
    log.parent.mkdir(parents=True)
    req_a, req_b = "req_011CAAAAAAAAAAAAAAAAAAAA", "req_011CBBBBBBBBBBBBBBBBBBBB"
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        w = CLAUDE_CODE.watcher(ledger, PriceBook(), CLAUDE_CODE.roots([str(tmp_path)]), settle_s=5)
        # a response logged once per content block, the usage growing; the last line still being written
        log.write_text(
            _cc_line("msg_A", req_a, 5, "2026-11-20T09:00:00Z")
            + "\n"
            + _cc_line("msg_A", req_a, 40, "2026-11-20T09:00:02Z")[:30]
        )
        now = time.time()
        assert w.poll(now).seen == 0  # the file is still being written: wait
        with log.open("a") as fh:
            fh.write(_cc_line("msg_A", req_a, 40, "2026-11-20T09:00:02Z")[30:] + "\n")
        assert w.poll(time.time()).seen == 0
        with log.open("a") as fh:  # the next response: the first one is complete
            fh.write(_cc_line("msg_B", req_b, 7, "2026-11-20T09:01:00Z") + "\n")
        b = w.poll(time.time())
        assert (b.seen, b.new, b.sessions) == (1, 1, {"sess-1"})
        a = ledger.get(anthropic_call_id(req_a) or "")
        assert (
            a is not None
            and a.output_tokens == 40
            and a.timestamp == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
        )
        assert w.poll(time.time() + 10).new == 1  # idle long enough: msg_B is complete too
        assert w.poll(time.time() + 20).seen == 0
        assert len(ledger.query(filters={"agent": "claude-code"}, limit=None)) == 2


def test_codex_watcher_and_the_import_agree(tmp_path: Path) -> None:
    src = next((FIXTURE / "sessions").rglob(f"*{S1}.jsonl"))
    day = tmp_path / "sessions" / "2026" / "11" / "20"
    day.mkdir(parents=True)
    dst = day / src.name
    lines = src.read_text().splitlines(keepends=True)
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        w = codex.CODEX.watcher(ledger, PriceBook(), codex.CODEX.roots([str(tmp_path)]))
        dst.write_text("".join(lines[:8]))
        assert w.poll().new == 1
        with dst.open("a") as fh:
            fh.write("".join(lines[8:]))
        b = w.poll()
        assert (b.new, len(b.warnings)) == (1, 1)
        res = codex.import_codex(ledger, [str(tmp_path)], PriceBook())
        assert (res.calls, res.new) == (2, 0)


def test_import_codex_and_watch_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    shutil.copytree(FIXTURE, home)
    db = tmp_path / "l.db"
    env = {**os.environ, "CODEX_HOME": str(home)}
    r = subprocess.run(
        [LLMBUDGET, "import", "codex", "--db", str(db), "--json"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["calls"], data["new"], data["proxied_calls_skipped"]) == (2, 2, 1)
    watched = tmp_path / "live"
    (watched / "sessions").mkdir(parents=True)
    proc = subprocess.Popen(
        [
            LLMBUDGET,
            "import",
            "codex",
            str(watched),
            "--watch",
            "--interval",
            "0.2",
            "--db",
            str(tmp_path / "w.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        src = next((FIXTURE / "sessions").rglob(f"*{S1}.jsonl"))
        (watched / "sessions" / src.name).write_text(src.read_text())
        deadline = time.monotonic() + 20
        found: list[Any] = []
        while len(found) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            if (tmp_path / "w.db").exists():
                with open_ledger(f"sqlite:///{tmp_path / 'w.db'}") as ledger:
                    found = ledger.query(filters={"backend": "codex"}, limit=None)
        assert len(found) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "+2 Codex calls" in out and "Stopped after" in err


def test_watch_needs_an_agent_log_source(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text("")
    r = subprocess.run(
        [LLMBUDGET, "import", str(tmp_path / "x.jsonl"), "--watch"], capture_output=True, text=True
    )
    assert r.returncode == 1 and "--watch: follows claude-code or codex logs" in r.stderr


def test_watch_claude_code_from_the_command_line(tmp_path: Path) -> None:
    projects = tmp_path / "claude" / "projects" / "-home-alice-code-webapp"
    projects.mkdir(parents=True)
    db = tmp_path / "cc.db"
    proc = subprocess.Popen(
        [
            LLMBUDGET,
            "import",
            "claude-code",
            str(tmp_path / "claude"),
            "--watch",
            "--interval",
            "0.2",
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        log = projects / "sess-9.jsonl"
        log.write_text(
            _cc_line("msg_X", "req_011CXXXXXXXXXXXXXXXXXXXX", 12, "2026-11-20T10:00:00Z", "sess-9")
            + "\n"
            + _cc_line("msg_Y", "req_011CYYYYYYYYYYYYYYYYYYYY", 30, "2026-11-20T10:00:05Z", "sess-9")
            + "\n"
        )
        deadline = time.monotonic() + 20
        found: list[Any] = []
        while len(found) < 2 and time.monotonic() < deadline:  # msg_Y once the file is quiet for 2 s
            time.sleep(0.3)
            if db.exists():
                with open_ledger(f"sqlite:///{db}") as ledger:
                    found = ledger.query(filters={"session": "sess-9"}, limit=None)
        assert sorted(e.output_tokens for e in found) == [12, 30]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Claude Code responses" in out and "2 new Claude Code responses" in err


def test_import_codex_brings_the_budget_counters_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Calls imported from Codex's logs never met the gate: the import reconciles the budgets after."""
    text = "budgets:\n  daily_limit_usd: 50.00\n  timezone: UTC\n"
    cfg = tmp_path / "llmbudget.yaml"
    cfg.write_text(text)
    db = f"sqlite:///{tmp_path / 'l.db'}"
    with open_ledger(db, audit=False) as ledger:  # a call through the gate: the counters hold $1.25
        enf = build_enforcer(parse_config(text, str(cfg))[0], db, state=ledger, price_fn=lambda *a: None)
        a = enf.admit(CallInfo("x", "openai", "openai", "m", 10, 10, agent="coder"))
        spent = Decimal("1.25")
        enf.settle(a, UsageEvent(backend="x", model="m", cost_usd=spent, price_status="priced"))
        enf.close()
    now = datetime.now(UTC).isoformat()
    usage = {"input_tokens": 100_000, "cached_input_tokens": 0, "output_tokens": 2000}
    info = {"last_token_usage": usage, "total_token_usage": usage}
    lines = [
        {"timestamp": now, "type": "session_meta", "payload": {"id": "s-today"}},
        {"timestamp": now, "type": "turn_context", "payload": {"model": "gpt-5"}},
        {"timestamp": now, "type": "event_msg", "payload": {"type": "token_count", "info": info}},
    ]
    log = tmp_path / "codex" / "sessions" / "rollout-today.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["import", "codex", str(tmp_path / "codex"), "--config", str(cfg), "--db", db, "--json"]) == 0
    cost = Decimal(json.loads(capsys.readouterr().out)["cost_usd"])
    assert cost > 0
    assert main(["budget", "--config", str(cfg), "--db", db, "--json"]) == 0
    daily = {b["name"]: b for b in json.loads(capsys.readouterr().out)["budgets"]}["daily"]
    # the counters already held the imported calls: `budget` had nothing to correct
    assert (Decimal(daily["spent"]), Decimal(daily["drift"])) == (spent + cost, 0)


def _codex_count(total_in: int, last_in: int, ts: str) -> str:
    def usage(n: int) -> dict[str, int]:
        return {
            "input_tokens": n,
            "cached_input_tokens": 0,
            "output_tokens": 10,
            "reasoning_output_tokens": 0,
        }

    info = {"total_token_usage": usage(total_in), "last_token_usage": usage(last_in)}
    return json.dumps(
        {"timestamp": ts, "type": "event_msg", "payload": {"type": "token_count", "info": info}}
    )


def test_a_call_no_ledger_could_hold_is_skipped_naming_file_and_line(tmp_path: Path) -> None:
    """A line whose call fails the ledger's checks (absurd tokens, an endless session id) is skipped
    like a corrupted line: the import and a running watch go on with the rest."""
    absurd = 10**30
    day = tmp_path / "codex" / "sessions" / "2026" / "11" / "22"
    day.mkdir(parents=True)
    meta = {"timestamp": "2026-11-22T10:00:00Z", "type": "session_meta", "payload": {"id": "s-poison"}}
    turn = {"timestamp": "2026-11-22T10:00:00Z", "type": "turn_context", "payload": {"model": "gpt-5"}}
    codex_log = day / "rollout-poison.jsonl"
    codex_log.write_text(
        "\n".join(
            [
                json.dumps(meta),
                json.dumps(turn),
                _codex_count(100, 100, "2026-11-22T10:00:01Z"),
                _codex_count(absurd, absurd, "2026-11-22T10:00:02Z"),
                _codex_count(absurd + 50, 50, "2026-11-22T10:00:03Z"),
            ]
        )
        + "\n"
    )
    r = subprocess.run(
        [LLMBUDGET, "import", "codex", str(tmp_path / "codex"), "--db", str(tmp_path / "c.db"), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["calls"], data["new"]) == (2, 2)
    assert [w.split(": skipped: ")[0] for w in data["warnings"]] == [f"{codex_log}:4"]
    assert "beyond the bound" in data["warnings"][0]

    projects = tmp_path / "claude" / "projects" / "-home-alice-code-webapp"
    projects.mkdir(parents=True)
    cc_log = projects / "sess-p.jsonl"
    cc_log.write_text(
        "\n".join(
            [
                _cc_line("msg_1", "req_011C1111111111111111111", 12, "2026-11-20T10:00:00Z", "sess-p"),
                _cc_line("msg_2", "req_011C2222222222222222222", 13, "2026-11-20T10:00:01Z", "x" * 5000),
                _cc_line("msg_3", "req_011C3333333333333333333", absurd, "2026-11-20T10:00:02Z", "sess-p"),
                _cc_line("msg_4", "req_011C4444444444444444444", 14, "2026-11-20T10:00:03Z", "sess-p"),
            ]
        )
        + "\n"
    )
    r = subprocess.run(
        [LLMBUDGET, "import", "claude-code", str(tmp_path / "claude"), "--db", str(tmp_path / "cc.db")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "Imported 2 new Claude Code responses" in r.stdout, r.stdout
    assert f"{cc_log}:2: skipped: session" in r.stderr and f"{cc_log}:3: skipped: output_tokens" in r.stderr

    # following the logs: the bad call is a warning and the watch records what comes after it
    live = tmp_path / "live" / "sessions"
    live.mkdir(parents=True)
    db = tmp_path / "w.db"
    proc = subprocess.Popen(
        [LLMBUDGET, "import", "codex", str(live.parent), "--watch", "--interval", "0.2", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        lines = codex_log.read_text().splitlines(keepends=True)
        (live / codex_log.name).write_text("".join(lines[:4]))
        time.sleep(1.0)
        with (live / codex_log.name).open("a") as fh:
            fh.write(lines[4] + _codex_count(absurd + 90, 40, "2026-11-22T10:00:04Z") + "\n")
        deadline = time.monotonic() + 20
        found: list[Any] = []
        while len(found) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if db.exists():
                with open_ledger(f"sqlite:///{db}") as ledger:
                    found = ledger.query(filters={"session": "s-poison"}, limit=None)
        assert sorted(e.input_tokens for e in found) == [40, 50, 100]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"{live / codex_log.name}:4: skipped: input_tokens" in err, err
