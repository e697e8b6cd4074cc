"""CLI commands `costs`, `events` and `sessions`: thin shells over `llmbudget.reports`.

Every report prints a Rich table, or with `--json` exactly what `GET /api/...` answers, or
with `--csv` its rows as formula-safe CSV (`report_tables.py` prints them).
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import reports
from . import common, config_cmd, export_cmd, report_tables
from .report_options import (
    AgentOpt,
    BackendOpt,
    ByOpt,
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

_one_format = common.one_format


def costs(
    by: ByOpt = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", help="With --by: at most N rows (costliest, or latest periods)."),
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
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
) -> None:
    """Spend: today, this month and per backend; or grouped with --by over --since/--until (default this month)."""
    _one_format(json_, csv_)
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
    reports.normalize_by(by)  # a bad --by fails before the database is opened
    if limit is not None:
        reports.check_limit(limit)
    with common.reading_ledger(config, db) as (cfg, ledger):
        zone = cfg.zone()
        data = reports.costs_report(
            ledger, zone=zone, since=since, until=until, by=by, filters=filters, limit=limit
        )
    if json_:
        common.print_json(data)
        return
    report_tables.print_costs(data, zone, csv_)


def events(
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="How many events, newest first.")
    ] = reports.DEFAULT_EVENTS_LIMIT,
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
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
) -> None:
    """Raw events, newest first (100 by default), filtered by any attribution field."""
    _one_format(json_, csv_)
    reports.check_limit(limit)
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
        zone = cfg.zone()
        data = reports.events_report(
            ledger, zone=zone, since=since, until=until, filters=filters, limit=limit
        )
    if json_:
        common.print_json(data)
        return
    report_tables.print_events(data, zone, csv_)


def sessions(
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="How many sessions, most recent first.")
    ] = reports.DEFAULT_SESSIONS_LIMIT,
    since: SinceOpt = None,
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
) -> None:
    """Recent sessions (30 by default): Session ID | Start | End | Tokens | Cost | Agents."""
    _one_format(json_, csv_)
    reports.check_limit(limit)
    with common.reading_ledger(config, db) as (cfg, ledger):
        zone = cfg.zone()
        data = reports.sessions_report(ledger, zone=zone, since=since, limit=limit)
    if json_:
        common.print_json(data)
        return
    report_tables.print_sessions(data, zone, csv_)


def register(app: typer.Typer) -> None:
    """Add the report commands to the app, with `export` (cli/export_cmd.py) and the `config` group (cli/config_cmd.py)."""
    config_cmd.register(app)
    app.command("costs")(costs)
    app.command("events")(events)
    app.command("sessions")(sessions)
    export_cmd.register(app)
