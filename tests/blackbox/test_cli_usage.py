"""The installed `llmbudget` command, run as a user runs it: typos get one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llmbudget import __version__

Run = Callable[..., subprocess.CompletedProcess[str]]
LLMBUDGET = Path(sys.executable).with_name("llmbudget")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["cots"], "No such command 'cots'"),
        (["costs", "--bogus"], "No such option: --bogus"),
        (["events", "--limit", "abc"], "'--limit'"),
        (["agents", "pause"], "Missing argument"),
        (["costs", "--by"], "'--by' requires an argument"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(llmbudget: Run, args: list[str], needle: str) -> None:
    p = llmbudget(*args)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert p.stdout == ""


def test_no_arguments_prints_the_help_and_exits_2(llmbudget: Run) -> None:
    p = llmbudget()
    assert p.returncode == 2
    assert "Usage: llmbudget" in p.stdout and "costs" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_version(llmbudget: Run) -> None:
    p = llmbudget("--version")
    assert (p.returncode, p.stdout.strip()) == (0, f"llmbudget {__version__}")


def test_the_postgres_hint_keeps_its_brackets(llmbudget: Run, tmp_path: Path) -> None:
    """Without psycopg, the hint names the extra `llmbudget[postgres]` (Rich once ate `[postgres]` as a style)."""
    blocker = tmp_path / "blocked" / "psycopg"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('psycopg is not installed (test)')\n")
    p = llmbudget(
        "events",
        "--db",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        env={"PYTHONPATH": str(blocker.parent)},
    )
    assert p.returncode == 1
    assert "pip install 'llmbudget[postgres]'" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


CRASH = """
import sys
from llmbudget.cli import app, main

@app.command("crash")
def crash() -> None:
    raise RuntimeError("boom [red]x[/red]")

sys.exit(main())
"""


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_is_one_red_line_unless_debugging(tmp_path: Path, debug: bool) -> None:
    """Library code that fails in a way nobody planned: one line and a hint; the traceback under --debug."""
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    args = ["--debug", "crash"] if debug else ["crash"]
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "error: unexpected RuntimeError: boom [red]x[/red]" in p.stderr
    assert ("Traceback (most recent call last)" in p.stderr) is debug
    if not debug:
        assert len(p.stderr.strip().splitlines()) == 2 and "hint:" in p.stderr


SPEW = """
import sys
import typer
from llmbudget.cli import app, main

@app.command("spew")
def spew() -> None:
    for i in range(200_000):
        typer.echo(f"row {i},0.000000001")

sys.exit(main())
"""


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """`llmbudget events --csv | head -1`: the closed pipe ends the command quietly."""
    script = tmp_path / "spew.py"
    script.write_text(SPEW)
    p = subprocess.run(
        f"set -o pipefail; '{sys.executable}' '{script}' spew | head -n 1",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.stdout == "row 0,0.000000001\n"
    assert p.stderr == ""
    assert p.returncode == 1  # the writer's status under pipefail: it stopped early


def test_a_piped_table_is_not_wrapped_at_80_columns(llmbudget: Run, tmp_path: Path) -> None:
    """`llmbudget events | grep ...` sees each row on one line, however long the names."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from llmbudget.events import UsageEvent
    from llmbudget.store import open_ledger

    agent = "agent-" + "x" * 120
    model = "model-" + "y" * 60
    db = f"sqlite:///{tmp_path / 'pipe.db'}"
    with open_ledger(db) as led:
        led.record(
            UsageEvent(
                backend="local",
                model=model,
                agent=agent,
                session="s-1",
                timestamp=datetime.now(UTC),
                input_tokens=1,
                output_tokens=1,
                cost_usd=Decimal("0.5"),
                price_status="priced",
            )
        )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    p = subprocess.run(
        [str(LLMBUDGET), "events", "--db", db], capture_output=True, text=True, env=env, timeout=60
    )
    assert p.returncode == 0, p.stderr
    row = [line for line in p.stdout.splitlines() if agent in line]
    assert row and model in row[0] and "$0.5000" in row[0], p.stdout
    p = subprocess.run(
        [str(LLMBUDGET), "costs", "--by", "agent", "--db", db],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert any(agent in line and "$0.5000" in line for line in p.stdout.splitlines()), p.stdout
