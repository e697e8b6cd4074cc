"""The shared late progress bar: shown on a terminal once a job runs past its delay, never otherwise."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from llmbudget.cli import common


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=out, force_terminal=True, width=100))
    return out


def test_a_slow_job_shows_a_bar_with_its_label_and_count(terminal: io.StringIO) -> None:
    with common.LateProgress("exporting", 2000, delay=0) as bar:
        bar(1000)
        bar(2000)
    assert "exporting" in terminal.getvalue() and "2000/2000" in terminal.getvalue()


def test_a_quick_job_shows_nothing(terminal: io.StringIO) -> None:
    with common.LateProgress("exporting", 10, delay=60) as bar:
        bar(10)
    assert terminal.getvalue() == ""


def test_json_runs_and_non_terminals_show_nothing(
    terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    with common.LateProgress("importing x", delay=0, enabled=False) as bar:
        bar(5, 10)
    assert terminal.getvalue() == ""
    monkeypatch.setattr(common, "err_console", Console(file=terminal, force_terminal=False))
    with common.LateProgress("importing x", delay=0) as bar:
        bar(5, 10)
    assert terminal.getvalue() == ""


def test_per_row_callbacks_look_at_the_clock_every_nth_row_only(terminal: io.StringIO) -> None:
    bar = common.LateProgress("exporting", 5000, delay=0, check_every=1024)
    bar(1000)  # not a multiple of 1024: ignored
    assert terminal.getvalue() == ""
    bar(1024)
    bar.close()
    assert "1024/5000" in terminal.getvalue()


def test_bytes_mode_shows_sizes(terminal: io.StringIO) -> None:
    with common.LateProgress("importing usage.jsonl", delay=0, unit_bytes=True) as bar:
        bar(512_000, 1_024_000)
    assert "importing usage.jsonl" in terminal.getvalue() and "MB" in terminal.getvalue()
