"""CLI commands: `monitor` (probe every account now) and `summary` (the compact block for an agent's prompt).

`monitor` exits 0 when no account is CRITICAL and 2 when at least one is (1 stays the code
for an error such as a broken config), so a cron job or CI step can act on it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..money import format_exact, format_usd
from ..quota.monitor import AccountStatus, MonitorResult, run_monitor
from ..quota.severity import Severity
from ..quota.summary import DEFAULT_MAX_AGE, build_summary, countdown, parse_max_age
from ..store import Ledger
from . import common

#: exit code of `monitor` when any account is CRITICAL
EXIT_CRITICAL = 2

_STYLE = {
    Severity.CRITICAL: "bold red",
    Severity.WARNING: "yellow",
    Severity.OK: "green",
    Severity.UNKNOWN: "dim",
}

ProviderNameOpt = Annotated[
    list[str] | None,
    typer.Option("--provider", "-p", help="Only this configured account (repeat for several)."),
]
NoLogOpt = Annotated[bool, typer.Option("--no-log", help="Do not store the readings (ledger and JSONL log).")]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _window_cell(a: AccountStatus, name: str, now: datetime) -> str:
    w = a.reading.windows.get(name)
    if w is None:
        return "-"
    cell = _pct(w.utilization)
    if w.reset is not None:
        cell += f" ({countdown(w.reset, now)})"
    return cell


def _headroom_cell(a: AccountStatus, now: datetime) -> str:
    r = a.reading
    parts = []
    for name, lim in r.limits.items():
        if lim.unlimited:
            parts.append(f"{name}: no limit")
        elif lim.remaining is not None:
            text = f"{name}: {lim.remaining:,}" + (f"/{lim.limit:,}" if lim.limit else "")
            if lim.reset is not None:
                text += f" ({countdown(lim.reset, now)})"
            parts.append(text)
    if r.credit_usd is not None:
        parts.append(
            f"credit {format_usd(r.credit_usd, 2)}" + (f"/{format_exact(r.limit_usd)}" if r.limit_usd else "")
        )
    elif r.usage_usd is not None:
        parts.append(f"used {format_usd(r.usage_usd, 2)}, no limit")
    return "\n".join(parts) or "-"


def _notes(a: AccountStatus, now: datetime) -> str:
    r = a.reading
    notes = list(a.assessment.reasons)
    if r.reset is not None and "5h" not in r.windows and "7d" not in r.windows:
        notes.append(f"resets in {countdown(r.reset, now)}")
    if r.retry_delay_s is not None:
        notes.append(f"retry in {r.retry_delay_s:g}s")
    if r.retry_after_s is not None:
        notes.append(f"retry-after {r.retry_after_s:g}s")
    # the reason is already among the assessment's reasons when it decided the severity
    if r.reason and r.reason not in notes:
        notes.append(r.reason)
    return "\n".join(dict.fromkeys(notes)) or ""


def _key_cell(v: bool | None) -> str:
    return {True: "valid", False: "[bold red]INVALID[/]", None: "-"}[v]


#: below this console width nine columns no longer fit: one block of lines per account instead
WIDE = 130


def _print_narrow(result: MonitorResult, now: datetime) -> None:
    con = common.console
    width = max((len(a.reading.backend) for a in result.accounts), default=0)
    for a in result.accounts:
        sev = a.assessment.severity
        r = a.reading
        figures = [f"{name} {_window_cell(a, name, now)}" for name in ("5h", "7d") if name in r.windows]
        figures += [p for p in _headroom_cell(a, now).split("\n") if p != "-"]
        if r.cost_usd is not None:
            figures.append(f"${r.cost_usd}/call")
        if r.key_valid is not None:
            figures.append("key " + ("valid" if r.key_valid else "[bold red]INVALID[/]"))
        con.print(
            f"[{_STYLE[sev]}]{sev.value:<8}[/] {escape(r.backend).ljust(width)}  {escape(r.provider)}",
            highlight=False,
            soft_wrap=True,
        )
        pad = " " * 11
        if figures:
            con.print(
                pad + " · ".join(f if f.startswith("key ") else escape(f) for f in figures), highlight=False
            )
        for note in filter(None, _notes(a, now).split("\n")):
            con.print(pad + escape(note), highlight=False)


def print_monitor(result: MonitorResult, now: datetime) -> None:
    if common.console.width < WIDE:
        _print_narrow(result, now)
        for err in result.storage_errors:
            common.err_console.print(
                f"[yellow]warning:[/] reading not stored: {escape(err)}", highlight=False, soft_wrap=True
            )
        common.console.print(result.overall, highlight=False)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("Account", "Kind", "Status", "5h", "7d", "Headroom", "Cost/call", "Key", "Notes"):
        table.add_column(col, overflow="fold")
    for a in result.accounts:
        sev = a.assessment.severity
        r = a.reading
        # provider text can contain brackets that Rich would read as markup
        table.add_row(
            escape(r.backend),
            escape(r.provider),
            f"[{_STYLE[sev]}]{sev.value}[/]",
            _window_cell(a, "5h", now),
            _window_cell(a, "7d", now),
            escape(_headroom_cell(a, now)),
            f"${r.cost_usd}" if r.cost_usd is not None else "-",
            _key_cell(r.key_valid),
            escape(_notes(a, now)),
        )
    common.console.print(table)
    for err in result.storage_errors:
        common.err_console.print(
            f"[yellow]warning:[/] reading not stored: {escape(err)}", highlight=False, soft_wrap=True
        )
    common.console.print(result.overall, highlight=False)


def register(app: typer.Typer) -> None:
    """Add `monitor` and `summary` to the app."""

    @app.command("monitor")
    def monitor(
        provider: ProviderNameOpt = None,
        json_: common.JsonOpt = False,
        csv_: common.CsvOpt = False,
        no_log: NoLogOpt = False,
        config: common.ConfigOpt = None,
        db: common.DbOpt = None,
    ) -> None:
        """Probe every configured quota account now: status, 5h/7d utilization, resets, headroom, key validity.

        Exit code 2 when any account is CRITICAL.
        """
        common.one_format(json_, csv_)
        ledger: Ledger | None = None
        if no_log:
            cfg = common.load(config)
        else:
            cfg, ledger = common.open_ledger_for(config, db)
        try:
            now = datetime.now(UTC)
            result = run_monitor(cfg, ledger=ledger, names=provider or None, log_readings=not no_log, now=now)
        finally:
            if ledger is not None:
                ledger.close()
        if json_:
            common.print_json(result.to_dict())
        elif csv_:  # one row per account; nested reading fields as dotted columns
            common.print_csv(result.to_dict()["accounts"])
        else:
            print_monitor(result, now)
        if result.any_critical:
            raise typer.Exit(EXIT_CRITICAL)

    @app.command("summary")
    def summary(
        max_age: Annotated[
            str, typer.Option("--max-age", help="Reuse stored readings younger than this (20m, 1h, 90s).")
        ] = "20m",
        json_: common.JsonOpt = False,
        csv_: common.CsvOpt = False,
        no_probe: Annotated[
            bool, typer.Option("--no-probe", help="Use stored readings only; never call a provider.")
        ] = False,
        no_log: NoLogOpt = False,
        config: common.ConfigOpt = None,
        db: common.DbOpt = None,
    ) -> None:
        """The compact quota block for an agent's wake prompt, ending `→ Current recommendation: use X | avoid Y`."""
        common.one_format(json_, csv_)
        age = parse_max_age(max_age) if max_age else DEFAULT_MAX_AGE
        cfg, ledger = common.open_ledger_for(config, db)
        try:
            s = build_summary(cfg, ledger, max_age=age, probe=not no_probe, log_readings=not no_log)
        finally:
            ledger.close()
        if s.storage_errors:
            # on stderr: stdout is the block an agent reads
            more = f" (and {len(s.storage_errors) - 1} more)" if len(s.storage_errors) > 1 else ""
            common.err_console.print(
                f"[yellow]warning:[/] reading not stored: {escape(s.storage_errors[0])}{more}",
                highlight=False,
                soft_wrap=True,
            )
        if json_:
            common.print_json(s.to_dict())
        elif csv_:  # one row per account, best first (the order of the recommendation)
            common.print_csv(s.to_dict()["accounts"])
        else:
            # plain text, no markup: this is pasted into prompts
            typer.echo(s.text())
