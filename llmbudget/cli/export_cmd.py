"""CLI command `export`: every matching event, oldest first, as CSV, JSON Lines or one JSON array.

It streams from the ledger (`Ledger.iter_events`) to stdout or, through a temporary file and a
rename, to `--output FILE`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Annotated

import typer

from .. import export as exp
from ..errors import ValidationError
from ..timeranges import parse_range
from . import common
from .report_options import (
    AgentOpt,
    BackendOpt,
    KeyOpt,
    ModelOpt,
    ProviderOpt,
    SessionOpt,
    SinceOpt,
    StatusOpt,
    TaskOpt,
    TaskTypeOpt,
    TeamOpt,
    TierOpt,
    UntilOpt,
    UserOpt,
)
from .report_options import filters as _filters


def export(
    csv_: Annotated[bool, typer.Option("--csv", help="Write CSV (formula-safe) with a header row.")] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Write JSON Lines: one event per line (re-importable).")
    ] = False,
    array: Annotated[
        bool, typer.Option("--array", help="With --json: one JSON array instead of JSON Lines.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    agent: AgentOpt = None,
    session: SessionOpt = None,
    user: UserOpt = None,
    team: TeamOpt = None,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    provider: ProviderOpt = None,
    task_type: TaskTypeOpt = None,
    task: TaskOpt = None,
    tier: TierOpt = None,
    status: StatusOpt = None,
    key: KeyOpt = None,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
) -> None:
    """Stream every matching event, oldest first, as CSV or JSON (to stdout or --output FILE)."""
    if csv_ == json_:
        raise ValidationError("--csv", "choose exactly one of --csv and --json")
    if array and not json_:
        raise ValidationError("--array", "only goes with --json")
    filters = _filters(
        agent=agent,
        session=session,
        user=user,
        team=team,
        model=model,
        backend=backend,
        provider=provider,
        task_type=task_type,
        task=task,
        tier=tier,
        status=status,
        key=key,
    )
    with common.reading_ledger(config, db) as (cfg, ledger):
        start, end = parse_range(since, until, zone=cfg.zone())
        total = ledger.count(since=start, until=end, filters=filters)
        events = ledger.iter_events(since=start, until=end, filters=filters)
        writer: Callable[..., int] = (
            exp.write_events_csv if csv_ else exp.write_json_array if array else exp.write_json_lines
        )
        progress = common.LateProgress("exporting", total, check_every=1024)
        try:
            if output is None:
                try:
                    n = writer(events, sys.stdout, on_row=progress)
                    sys.stdout.flush()
                except BrokenPipeError:  # `llmbudget export --csv | head`: the reader left, stop quietly
                    with contextlib.suppress(OSError):
                        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - swallow the final flush
                    return
            else:
                n = _write_file(output, lambda f: writer(events, f, on_row=progress))
        finally:
            progress.close()
    if output is not None:
        common.err_console.print(f"exported {n:,} events to {output}", highlight=False)


def _write_file(path: Path, write: Callable[[IO[str]], int]) -> int:
    """Write through a temporary file and rename, so a failed export never leaves half a file."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            n = write(f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ValidationError("--output", f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def register(app: typer.Typer) -> None:
    """Add `export` to the app."""
    app.command("export")(export)
