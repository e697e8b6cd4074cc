"""Shared CLI plumbing: the --config/--db options, the consoles, JSON output."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from ..config import Config, default_db_url, load_config, resolve_db_url

console = Console()
err_console = Console(stderr=True)

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
    """Print an error the way every command does: one red line on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def load(config: str | None) -> Config:
    return load_config(config)


def open_ledger_for(config: str | None, db: str | None, *, must_exist: bool = False) -> tuple[Config, Any]:
    """Load the config and open the ledger it (or --db) names.

    With `must_exist` (read-only reports), a SQLite file named explicitly (--db, $LLMBUDGET_DB or
    `storage.url`) that does not exist is an error rather than a new empty ledger: a typo in the
    path must not look like "no spend".
    """
    from ..store import open_ledger

    cfg = load_config(config)
    url = resolve_db_url(db, cfg)
    if must_exist and url != default_db_url() and "://" not in url.removeprefix("sqlite:///"):
        from ..errors import StorageError
        from ..store.sqlite import sqlite_path

        path = sqlite_path(url)
        if not path.exists():
            raise StorageError(
                f"no ledger at {path}; check --db / $LLMBUDGET_DB / storage.url "
                "(`llmbudget serve` or `llmbudget import` creates one)"
            )
    return cfg, open_ledger(url, **ledger_options(cfg))


def ledger_options(cfg: Config) -> dict[str, Any]:
    st = cfg.storage
    return {
        "audit_log": st.audit_log,
        "audit": st.audit,
        "batch_size": st.batch_size,
        "flush_interval_s": st.flush_interval_s,
    }


def print_json(data: Any) -> None:
    """JSON to stdout, no colour, Decimals and datetimes as strings."""
    typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
