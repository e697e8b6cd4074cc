"""CLI commands: `budget [--utilization]`, `alerts`, `agents pause|resume|list` — thin shells over `llmbudget.budget`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..alerts import KINDS, list_notifications
from ..config import Config
from ..errors import ValidationError
from ..money import format_exact, format_usd
from ..store import Ledger
from . import common

if TYPE_CHECKING:  # start-up: only a type here; the enforcer loads when a command runs
    from ..budget.enforcer import BudgetEnforcer

agents_app = typer.Typer(
    help="Pause or resume an agent (its calls get HTTP 429 while paused).", no_args_is_help=True
)


@contextmanager
def _enforcer(config: str | None, db: str | None) -> Iterator[tuple[Config, Ledger, BudgetEnforcer]]:
    """(config, ledger, enforcer) for a command; prices are not needed to report, so none are loaded."""
    from ..budget.factory import build_enforcer  # start-up: loaded when the command runs

    cfg, ledger = common.open_ledger_for(config, db)
    try:
        enf = build_enforcer(cfg, ledger.url, state=ledger, price_fn=lambda *a: None)
        try:
            yield cfg, ledger, enf
        finally:
            enf.close()
    finally:
        ledger.close()


#: `budget --csv` columns: money as exact decimals, times as RFC 3339
BUDGET_COLUMNS = (
    "name",
    "scope",
    "match",
    "value",
    "unit",
    "period",
    "action",
    "committed",
    "limit",
    "spent",
    "reserved",
    "remaining",
    "percent",
    "window_start",
    "reset",
    "status",
)
#: `alerts --csv` columns
ALERT_COLUMNS = (
    "id",
    "timestamp",
    "kind",
    "level",
    "budget",
    "scope",
    "spent_usd",
    "limit_usd",
    "threshold",
    "reset",
    "message",
)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def budget(
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    utilization: Annotated[
        bool,
        typer.Option(
            "--utilization",
            help="Show use, elapsed cycle, pace and projection per backend, and where to send work.",
        ),
    ] = False,
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
) -> None:
    """Every budget: limit, spent, reserved, remaining, percent, reset and status."""
    common.one_format(json_, csv_)
    with _enforcer(config, db) as (cfg, ledger, enf):
        from ..budget.report import budget_report  # start-up: loaded when the command runs

        data = budget_report(enf, ledger, cfg, utilization=utilization)
    if json_:
        common.print_json(data)
        return
    if csv_:  # one table per CSV: the budgets, or with --utilization the cycles
        if utilization:
            common.print_csv(data["utilization"]["cycles"])
        else:
            common.print_csv(data["budgets"], BUDGET_COLUMNS)
        return
    if not data["budgets"] and not utilization:
        common.console.print(
            "No budgets configured. Add a `budgets:` block to the config (see README, Budgets)."
        )
    if data["budgets"]:
        t = Table(box=box.SIMPLE_HEAVY, title=f"Budgets ({data['timezone']})", padding=0)
        # amounts, dates and statuses never wrap (a split "$46.79|00" misreads); names fold instead
        # the scope goes under the budget's name (one flexible column); amounts, dates and statuses
        # never wrap (a split "$46.79|00" misreads)
        for col in ("budget", "limit", "spent", "reserved", "remaining", "%", "resets", "status"):
            numeric = col in ("limit", "spent", "reserved", "remaining", "%")
            t.add_column(
                col,
                justify="right" if numeric else "left",
                overflow="fold",
                no_wrap=col not in ("budget", "resets"),  # a reset time may go under its date
                ratio=1 if col == "budget" else None,
                min_width=12 if col == "budget" else None,
            )
        colour = {"ok": "green", "warning": "yellow", "exhausted": "red"}
        for b in data["budgets"]:
            money = b["unit"] == "usd"

            def fmt(v: Any, money: bool = money, places: int | None = None) -> str:
                if not money:
                    n = int(v)
                    # millions compactly: the exact count is in --json
                    return f"{n / 1e6:.2f}M tok" if abs(n) >= 1_000_000 else f"{n:,} tok"
                d = Decimal(v)
                # cents once a dollar is reached, four places below it (small budgets stay readable)
                return format_usd(d, places if places is not None else (2 if abs(d) >= 1 or d == 0 else 4))

            scope = "" if b["scope"] == "global" else f"\n[dim]{b['scope']} {escape(str(b['value']))}[/]"
            reset = b["reset_local"].rsplit(" ", 1)[0] if b["reset"] else b["reset_local"]
            if reset.endswith(" 00:00"):  # calendar windows reset at midnight: the date says it
                reset = reset[: -len(" 00:00")]
            t.add_row(
                f"{escape(b['name'])}{scope}",
                format_exact(Decimal(b["limit"])) if money else fmt(b["limit"]),  # as configured
                fmt(b["spent"]),
                fmt(b["reserved"]),
                fmt(b["remaining"]),
                f"{b['percent']:.1f}",
                reset,
                f"[{colour[b['status']]}]{b['status']}[/]",
            )
        common.console.print(t)
        for b in data["budgets"]:
            # counters that were off the ledger (an import, a reprice, calls this gate never saw)
            drift = Decimal(str(b["drift"]))
            if drift:
                money = b["unit"] == "usd"
                amount = format_usd(abs(drift), 4) if money else f"{abs(int(drift)):,} tokens"
                where = "" if b["scope"] == "global" else f" ({b['scope']} {b['value']})"
                common.console.print(
                    f"[yellow]drift[/] {b['name']}{where}: the counter was {amount} "
                    f"{'above' if drift > 0 else 'below'} the ledger and is reconciled now",
                    highlight=False,
                )
    for p in data["paused_agents"]:
        common.console.print(
            f"[red]paused[/] agent {escape(str(p.get('agent')))}: {escape(p.get('reason') or '')} "
            f"(resume: llmbudget agents resume {escape(str(p.get('agent')))})",
            highlight=False,
        )
    if utilization:
        u = data["utilization"]
        if not u["cycles"]:
            common.console.print(
                "No committed budgets (`committed: true`) and no recent quota readings to judge."
            )
            return
        t = Table(box=box.SIMPLE_HEAVY, title="Utilization")
        for col in ("backend", "source", "used", "elapsed", "pace", "projected", "resets"):
            t.add_column(col, justify="left" if col in ("backend", "source", "resets") else "right")
        for c in u["cycles"]:
            t.add_row(
                escape(c["name"]),
                escape(c["source"]),
                _pct(c["used"]),
                _pct(c["elapsed"]),
                "-" if c["pace"] is None else f"{c['pace']:.2f}x",
                _pct(c["projected"]),
                c["reset"] or "-",
            )
        common.console.print(t)
        if u["recommendation"]:
            common.console.print(u["recommendation"], markup=False, highlight=False)


def alerts(
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="Newest N notifications.")] = 50,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="Only this kind (budget_warning, budget_exhausted, agent_paused, utilization_low, ...).",
        ),
    ] = None,
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
) -> None:
    """Budget warnings, exhausted budgets, pauses and utilization alerts, newest first."""
    common.one_format(json_, csv_)
    if limit < 1:
        raise ValidationError("--limit", f"must be at least 1, got {limit}")
    if kind is not None and kind not in KINDS:
        raise ValidationError("--kind", f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    _, ledger = common.open_ledger_for(config, db)
    try:
        items = list_notifications(ledger, limit=limit, kind=kind)
    finally:
        ledger.close()
    if json_:
        common.print_json({"notifications": items})
        return
    if csv_:
        common.print_csv(items, ALERT_COLUMNS)
        return
    if not items:
        common.console.print("No alerts.")
        return
    t = Table(box=box.SIMPLE_HEAVY)
    for col in ("time", "kind", "message"):
        t.add_column(col)
    for n in items:
        t.add_row(n["timestamp"][:19].replace("T", " "), escape(n["kind"]), escape(n["message"]))
    common.console.print(t)


def _pause_or_resume(
    name: str, config: str | None, db: str | None, *, pause: bool, reason: str | None, json_: bool
) -> None:

    if not name.strip():
        raise ValidationError("NAME", "agent name must not be empty")
    with _enforcer(config, db) as (_, _ledger, enf):
        if pause:
            was = name in enf.paused()
            enf.pause(name, reason=reason or "paused by hand", by="cli")
            changed = not was
        else:
            changed = enf.resume(name)
    if json_:
        common.print_json({"agent": name, "paused": pause, "changed": changed})
        return
    verb = "paused" if pause else "resumed"
    common.console.print(
        f"agent {name} {verb}" if changed else f"agent {name} was already {'paused' if pause else 'running'}",
        markup=False,
        highlight=False,
    )


@agents_app.command("pause")
def agents_pause(
    name: Annotated[str, typer.Argument(help="Agent name (the X-LLMBudget-Agent header).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Shown in the 429 message.")] = None,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    json_: common.JsonOpt = False,
) -> None:
    """Pause an agent: its calls get HTTP 429 until resumed (stored in the ledger)."""
    _pause_or_resume(name, config, db, pause=True, reason=reason, json_=json_)


@agents_app.command("resume")
def agents_resume(
    name: Annotated[str, typer.Argument(help="Agent name.")],
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    json_: common.JsonOpt = False,
) -> None:
    """Resume a paused agent."""
    _pause_or_resume(name, config, db, pause=False, reason=None, json_=json_)


@agents_app.command("list")
def agents_list(
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    json_: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
) -> None:
    """Paused agents."""
    common.one_format(json_, csv_)
    with _enforcer(config, db) as (_, _ledger, enf):
        paused = sorted(enf.paused().values(), key=lambda p: p.get("agent", ""))
    if json_:
        common.print_json({"paused_agents": paused})
        return
    if csv_:
        common.print_csv(paused, ("agent", "paused_at", "reason", "budget", "by"))
        return
    if not paused:
        common.console.print("No agent is paused.")
    for p in paused:
        common.console.print(
            f"{p.get('agent')}: paused {p.get('paused_at', '')[:19]} — {p.get('reason') or ''}",
            markup=False,
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("budget")(budget)
    app.command("alerts")(alerts)
    app.add_typer(agents_app, name="agents")
