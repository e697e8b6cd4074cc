"""CLI commands: `db migrate` (the schema) and `db quarantine` (events the database refused).

`llmbudget import` lives in `llmbudget.cli.import_cmd`.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .. import export
from ..config import load_config, resolve_db_url
from ..errors import DatabaseMissing, ValidationError
from . import common

if TYPE_CHECKING:  # start-up: only a type here; `llmbudget --help` loads no back-end
    from ..store.sqlbase import SQLLedger


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    db_app = typer.Typer(name="db", help="The ledger database: schema migrations.", no_args_is_help=True)

    @db_app.command("migrate")
    def migrate(
        db: common.DbOpt = None,
        config: common.ConfigOpt = None,
        json_out: common.JsonOpt = False,
        create: Annotated[
            bool,
            typer.Option(
                "--create",
                help="Create the PostgreSQL database first when the server has none of that name "
                "(needs the CREATEDB privilege; SQLite files are always created).",
            ),
        ] = False,
    ) -> None:
        """Apply pending schema migrations and list every migration with when it was applied."""
        created = False
        try:
            _, ledger = common.open_ledger_for(config, db)
        except DatabaseMissing:
            if not create:
                raise
            from ..store.postgres import create_database  # optional extra (psycopg)

            url = resolve_db_url(db, load_config(config))
            created = create_database(url)
            _, ledger = common.open_ledger_for(config, db)
        sql = cast("SQLLedger", ledger)  # every ledger open_ledger opens is a SQL ledger
        try:
            now = {name for name, _, fresh in getattr(ledger, "migrations_applied_now", []) if fresh}
            rows = sql.applied_migrations()
            url = ledger._masked() if hasattr(ledger, "_masked") else ""
        finally:
            ledger.close()
        if json_out:
            common.print_json(
                {
                    "database": url,
                    "created": created,
                    "migrations": [{"name": n, "applied_at": at, "applied_now": n in now} for n, at in rows],
                }
            )
            return

        if created:
            common.console.print(f"created database {url}", markup=False, highlight=False)
        table = Table(title=f"Migrations of {escape(url)}", title_justify="left")
        table.add_column("Migration")
        table.add_column("Applied at")
        table.add_column("")
        for n, at in rows:
            table.add_row(n, at, "[green]applied now[/]" if n in now else "")
        common.console.print(table)
        common.console.print(f"{len(now)} applied now, {len(rows)} in total.", highlight=False)

    @db_app.command("quarantine")
    def quarantine(
        db: common.DbOpt = None,
        config: common.ConfigOpt = None,
        json_out: common.JsonOpt = False,
        csv_out: common.CsvOpt = False,
    ) -> None:
        """List events the database refused on their data (each kept with its reason, never dropped)."""
        quarantine_command(config, db, json_out=json_out, csv_out=csv_out)

    app.add_typer(db_app)


#: columns of `db quarantine --csv` (and keys of each `--json` entry)
QUARANTINE_COLUMNS = ("quarantined_at", "id", "timestamp", "backend", "model", "agent", "reason", "event")


def quarantine_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten quarantine entries for output: the event's main fields beside the reason."""
    rows = []
    for q in entries:
        ev = q.get("event")
        fields = ev if isinstance(ev, dict) else {}
        rows.append(
            {
                "quarantined_at": q.get("quarantined_at"),
                "id": fields.get("id"),
                "timestamp": fields.get("timestamp"),
                "backend": fields.get("backend"),
                "model": fields.get("model"),
                "agent": fields.get("agent"),
                "reason": q.get("reason"),
                "event": json.dumps(ev, ensure_ascii=False) if isinstance(ev, dict) else ev,
            }
        )
    return rows


def quarantine_command(config: str | None, db: str | None, *, json_out: bool, csv_out: bool) -> None:
    """`llmbudget db quarantine`: the quarantine file of the ledger's database, oldest first."""
    if json_out and csv_out:
        raise ValidationError("--json", "choose one of --json and --csv")
    _, ledger = common.open_ledger_for(config, db, must_exist=True)
    sql = cast("SQLLedger", ledger)  # every ledger open_ledger opens is a SQL ledger
    try:
        path = sql.quarantine_path
        entries = sql.quarantined()
    finally:
        ledger.close()
    rows = quarantine_rows(entries)
    if json_out:
        common.print_json({"file": str(path), "count": len(rows), "events": rows})
        return
    if csv_out:
        export.write_rows_csv(rows, QUARANTINE_COLUMNS, sys.stdout)
        return
    if not rows:
        common.console.print(f"No quarantined events ({path}).", highlight=False)
        return
    t = Table(title=f"Quarantined events ({path})", title_justify="left", box=box.SIMPLE_HEAD)
    for h in ("Quarantined at", "Event id", "Backend", "Model", "Reason"):
        t.add_column(h, overflow="fold")
    for r in rows:
        t.add_row(
            r["quarantined_at"] or "", r["id"] or "", r["backend"] or "", r["model"] or "", r["reason"] or ""
        )
    common.console.print(t)
    common.console.print(
        f"{len(rows)} quarantined. Fix a line and load it with `llmbudget import FILE` (the ids stay the same).",
        highlight=False,
    )
