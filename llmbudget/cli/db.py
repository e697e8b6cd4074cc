"""CLI commands: `db migrate` and `import`.

`import` is a single command whose first argument is the SOURCE: a JSONL file (our event shape
or the commonly logged one, see `llmbudget.importer`), or a named log format from
`IMPORT_SOURCES` (`claude-code`, `codex`), which receives the remaining arguments as its paths;
with `--watch` such a source is followed as its logs grow.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .. import export
from ..config import load_config, resolve_db_url
from ..errors import DatabaseMissing, NotFound, ValidationError
from ..importer import ImportResult, import_jsonl
from ..money import format_usd, from_nano
from ..pricing import PriceBook, provider_for
from . import agent_logs, common

if TYPE_CHECKING:  # start-up: only a type here; `llmbudget --help` loads no back-end
    from ..store.sqlbase import SQLLedger

#: named import sources: name -> fn(paths, json_out=..., config=..., db=...)
IMPORT_SOURCES: dict[str, Callable[..., None]] = {
    name: functools.partial(agent_logs.import_command, name) for name in agent_logs.SOURCES
}


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

    @app.command("import")
    def import_cmd(
        source: Annotated[
            str, typer.Argument(help="A JSONL file of events, or a log format: claude-code, codex.")
        ],
        paths: Annotated[
            list[str] | None,
            typer.Argument(help="More files (or, for claude-code and codex, their log paths)."),
        ] = None,
        watch: Annotated[
            bool,
            typer.Option(
                "--watch", help="claude-code, codex: keep following the logs as they grow (Ctrl-C stops)."
            ),
        ] = False,
        interval: Annotated[
            float, typer.Option("--interval", help="With --watch: seconds between looks at the logs.")
        ] = 2.0,
        db: common.DbOpt = None,
        config: common.ConfigOpt = None,
        json_out: common.JsonOpt = False,
    ) -> None:
        """Load usage logged elsewhere: our event JSONL or the common `prompt_tokens/completion_tokens` shape.

        A bad line is reported by number and skipped; re-importing a file adds nothing.
        """
        if watch:
            if source not in agent_logs.SOURCES:
                raise ValidationError("--watch", f"follows claude-code or codex logs, not {source!r}")
            agent_logs.watch_command(
                source, paths or None, interval_s=interval, json_out=json_out, config=config, db=db
            )
            return
        if source in IMPORT_SOURCES and not Path(source).is_file():
            IMPORT_SOURCES[source](paths or None, json_out=json_out, config=config, db=db)
            return
        import_files([source, *(paths or [])], db=db, config=config, json_out=json_out)


def import_files(files: list[str], *, db: str | None, config: str | None, json_out: bool) -> None:
    """Import JSONL files with a progress bar (after a second) and a summary per file."""
    for f in files:  # fail before touching the database
        if not Path(f).is_file():
            raise NotFound(f"{f}: no such file")
    cfg, ledger = common.open_ledger_for(config, db)
    prices = PriceBook.from_config(cfg)

    def provider_of(backend: str, model: str) -> str:
        b = cfg.backends.get(backend)
        if b is not None:
            return b.provider or ("local" if b.local else provider_for(model, b.base_url, b.kind))
        guess = provider_for(model)
        return guess if guess != "unknown" else provider_for(model, kind=backend)

    results = []
    try:
        for f in files:
            with common.LateProgress(
                f"importing {Path(f).name}", enabled=not json_out, unit_bytes=True
            ) as progress:
                results.append(
                    import_jsonl(ledger, f, prices=prices, provider_of=provider_of, progress=progress)
                )
        common.reconcile_budgets(cfg, ledger)
    finally:
        ledger.close()
    if json_out:
        common.print_json(results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results])
        return

    for r in results:
        for bad in r.bad[:50]:
            common.err_console.print(
                f"[yellow]warning:[/] {escape(f'{r.path}: {bad}')}", highlight=False, soft_wrap=True
            )
        if len(r.bad) > 50:
            common.err_console.print(
                f"[yellow]warning:[/] {escape(r.path)}: {len(r.bad) - 50} more bad lines", highlight=False
            )
        common.console.print(
            _import_summary(r, format_usd(from_nano(r.cost_nano), 4)), markup=False, highlight=False
        )


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _import_summary(r: ImportResult, cost: str) -> str:
    """One line: what was loaded and skipped, and what the file's calls cost (unpriced counted, never $0)."""
    skipped = [
        p
        for p in (
            _plural(r.duplicates, "duplicate") if r.duplicates else "",
            _plural(len(r.bad), "bad line") if r.bad else "",
        )
        if p
    ]
    valid = r.loaded + r.duplicates  # cost and unpriced cover every valid line, duplicates included
    priced = valid - r.unpriced
    if not valid:
        money = ""
    elif not r.unpriced:
        money = f"; the file's calls cost {cost}"
    elif not priced:
        money = f"; {_plural(r.unpriced, 'unpriced call')} in the file, cost unknown (`llmbudget prices --missing`)"
    else:
        money = (
            f"; the file's calls cost {cost} for {_plural(priced, 'priced call')} plus "
            f"{_plural(r.unpriced, 'unpriced call')} of unknown cost (`llmbudget prices --missing`)"
        )
    skip = f" (skipped {', '.join(skipped)})" if skipped else ""
    return f"{r.path}: loaded {_plural(r.loaded, 'event')} of {_plural(r.lines, 'line')}{skip}{money}; {r.seconds:.1f} s."


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
