"""Shared CLI plumbing: the --config/--db options, the consoles, JSON output."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from ..config import Config, load_config, resolve_db_url

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file (default: $LLMBUDGET_CONFIG, ./llmbudget.yaml, ~/.config/llmbudget/config.yaml)."),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL or SQLite path (default: $LLMBUDGET_DB, storage.url, ~/.local/share/llmbudget/llmbudget.db)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]


def fail(message: str) -> None:
    """Print an error the way every command does: one red line on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def load(config: str | None) -> Config:
    return load_config(config)


def open_ledger_for(config: str | None, db: str | None) -> tuple[Config, Any]:
    """Load the config and open the ledger it (or --db) names."""
    from ..store import open_ledger

    cfg = load_config(config)
    return cfg, open_ledger(resolve_db_url(db, cfg), **ledger_options(cfg))


def ledger_options(cfg: Config) -> dict[str, Any]:
    st = cfg.storage
    return {"audit_log": st.audit_log, "audit": st.audit, "batch_size": st.batch_size,
            "flush_interval_s": st.flush_interval_s}


def print_json(data: Any) -> None:
    """JSON to stdout, no colour, Decimals and datetimes as strings."""
    typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
