"""Shared CLI plumbing: the --config/--db options, the consoles, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .. import export
from ..config import Config, default_db_url, load_config, resolve_db_url
from ..errors import StorageError, ValidationError
from ..store import Ledger, ledger_options, open_ledger

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# rich's progress bar and the SQLite back-end are imported where used: `llmbudget --help` does not
# load them at start-up.

#: the width of tables written to a pipe or file (no terminal to fit): wide enough that no row wraps
PIPE_WIDTH = 4096


def make_console(*, stderr: bool = False) -> Console:
    """A Rich console; on a pipe or file it does not wrap at 80 columns as Rich would (unless $COLUMNS says so)."""
    c = Console(stderr=stderr)
    if not c.is_terminal and not os.environ.get("COLUMNS"):
        c.width = PIPE_WIDTH
    return c


console = make_console()
err_console = make_console(stderr=True)

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $LLMBUDGET_CONFIG, ./llmbudget.yaml, ~/.config/llmbudget/config.yaml).",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL or SQLite path (default: $LLMBUDGET_DB, storage.url, ~/.local/share/llmbudget/llmbudget.db).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]


def fail(message: str) -> None:
    """Print an error the way every command does: one red line on stderr (the message is plain text, not markup)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def hint(message: str) -> None:
    """A dim second line under an error saying what to do next (plain text, not markup)."""
    err_console.print(f"[dim]hint: {escape(message)}[/]", highlight=False, soft_wrap=True)


def load(config: str | None) -> Config:
    return load_config(config)


def open_ledger_for(config: str | None, db: str | None, *, must_exist: bool = False) -> tuple[Config, Ledger]:
    """Load the config and open the ledger it (or --db) names.

    With `must_exist` (read-only reports), a SQLite file named explicitly (--db, $LLMBUDGET_DB or
    `storage.url`) that does not exist is an error rather than a new empty ledger: a typo in the
    path must not look like "no spend".
    """
    cfg = load_config(config)
    url = resolve_db_url(db, cfg)
    if must_exist and url != default_db_url() and "://" not in url.removeprefix("sqlite:///"):
        from ..store.sqlite import sqlite_path  # start-up: `llmbudget --help` loads no back-end

        path = sqlite_path(url)
        if not path.exists():
            raise StorageError(
                f"no ledger at {path}; check --db / $LLMBUDGET_DB / storage.url "
                "(`llmbudget serve` or `llmbudget import` creates one)"
            )
    # a read-only report leaves the audit log's replay to the processes that write
    return cfg, open_ledger(url, **ledger_options(cfg), replay_audit=not must_exist)


@contextlib.contextmanager
def reading_ledger(config: str | None, db: str | None) -> Iterator[tuple[Config, Ledger]]:
    """The config and its ledger, which must exist already (a report never creates one); closed after."""
    cfg, ledger = open_ledger_for(config, db, must_exist=True)
    try:
        yield cfg, ledger
    finally:
        ledger.close()


def one_format(json_: bool, csv_: bool) -> None:
    """--json and --csv exclude each other."""
    if json_ and csv_:
        raise ValidationError("--json", "choose one of --json and --csv")


def flatten(row: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested mappings as dotted columns (`reading.windows.5h.utilization`); lists stay one (JSON) cell."""
    out: dict[str, object] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = None if isinstance(v, Mapping) else v
    return out


def print_csv(rows: Iterable[Mapping[str, object]], columns: Sequence[str] | None = None) -> None:
    """Report rows as formula-safe CSV on stdout (export.py's writer); columns default to every key seen, in order."""
    flat = [flatten(r) for r in rows]
    if columns is None:
        columns = list(dict.fromkeys(k for r in flat for k in r))
    export.write_rows_csv(flat, columns, sys.stdout)


def print_json(data: object) -> None:
    """JSON to stdout, no colour, Decimals and datetimes as strings."""
    typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


class LateProgress:
    """A Rich progress bar on stderr that appears only once a job has run for more than `delay` seconds.

    Call it with the work done so far (and the total when it changes); quick jobs, `--json` runs
    (`enabled=False`) and output that is not a terminal never show a bar. `check_every` skips the
    clock on all but every Nth call, for per-row callbacks.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        delay: float = 1.0,
        enabled: bool = True,
        unit_bytes: bool = False,
        check_every: int = 1,
    ) -> None:
        self.label, self.total, self.delay = label, total, delay
        self.enabled = enabled and err_console.is_terminal
        self.unit_bytes, self.check_every = unit_bytes, check_every
        self.started = time.monotonic()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled or (self.check_every > 1 and done % self.check_every):
            return
        if total is not None:
            self.total = total
        if self._bar is None:
            if time.monotonic() - self.started < self.delay:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            counter = DownloadColumn() if self.unit_bytes else MofNCompleteColumn()
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                counter,
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total or None)
        if self._task is not None:
            self._bar.update(self._task, completed=done, total=self.total or None)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> LateProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reconcile_budgets(cfg: Config, ledger: Ledger) -> None:
    """After a write from outside the gate: bring the budget counters level with the ledger."""
    from ..budget.factory import reconcile_after_write  # start-up: loaded when a command writes

    warning = reconcile_after_write(cfg, ledger)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
