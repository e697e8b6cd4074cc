"""CLI command: `llmbudget import SOURCE [PATH...]`, usage logged elsewhere into the ledger.

SOURCE is a JSONL file (our event shape or the commonly logged one, see `llmbudget.importer`), or
a named log format from `IMPORT_SOURCES` (`claude-code`, `codex`, see `llmbudget.cli.agent_logs`),
which receives the remaining arguments as its paths; with `--watch` such a source is followed as
its logs grow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import NotFound, ValidationError
from ..importer import ImportResult, import_jsonl
from ..money import format_usd, from_nano
from ..pricing import PriceBook, provider_for
from . import agent_logs, common

#: named import sources: name -> fn(paths, json_out=..., config=..., db=...)
IMPORT_SOURCES: dict[str, Callable[..., None]] = {
    name: functools.partial(agent_logs.import_command, name) for name in agent_logs.SOURCES
}


def register(app: typer.Typer) -> None:
    """Add `import` to the app."""

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
