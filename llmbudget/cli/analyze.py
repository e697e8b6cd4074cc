"""CLI command `analyze`: quota analysis and 5-hour blocks.

A thin shell over `llmbudget.quota.report` (which runs `quota.analysis`, `quota.blocks` and
`quota.claude_code`).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from ..config import Config
from ..errors import ValidationError
from ..events import parse_timestamp, utcnow
from ..money import format_usd
from ..quota.report import SECTIONS, analyze_report
from ..timeranges import parse_since
from . import common

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("analyze")(analyze)


def _now(value: str | None) -> datetime:
    if value is None:
        return utcnow()
    try:
        return parse_timestamp(value)
    except ValidationError as e:
        raise ValidationError("--now", str(e)) from e


def _zone(cfg: Config) -> tzinfo:
    return ZoneInfo(cfg.timezone) if cfg.timezone else datetime.now().astimezone().tzinfo or UTC


def _when(dt: datetime | None, now: datetime) -> str:
    """`2026-11-20 14:00 (in 3h05m)` in UTC: quota resets are global instants."""
    if dt is None:
        return "-"
    secs = (dt - now).total_seconds()
    mins = round(abs(secs) / 60)
    span = f"{mins // 1440}d{(mins % 1440) // 60:02d}h" if mins >= 1440 else f"{mins // 60}h{mins % 60:02d}m"
    rel = f"in {span}" if secs >= 0 else f"{span} ago"
    return f"{dt.astimezone(UTC):%Y-%m-%d %H:%M}Z ({rel})"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _tokens(n: int) -> str:
    return f"{n:,}"


# ---------------------------------------------------------------------------- analyze
def analyze(
    burn_rate: Annotated[
        bool, typer.Option("--burn-rate", help="Utilization growth per account and projected exhaustion.")
    ] = False,
    weekly: Annotated[
        bool,
        typer.Option(
            "--weekly", help="Peak and average 7d utilization per ISO week, with exhaustion events."
        ),
    ] = False,
    stagger: Annotated[
        bool, typer.Option("--stagger", help="Windows resetting in the next 48 hours, soonest first.")
    ] = False,
    rotation: Annotated[
        bool,
        typer.Option("--rotation", help="Accounts ranked by headroom; maxed, rejected and invalid-key last."),
    ] = False,
    underspend: Annotated[
        bool,
        typer.Option(
            "--underspend", help="'Use it or lose it': ≥ 40% of a 5h window unused, < 2 h to reset."
        ),
    ] = False,
    blocks: Annotated[
        bool,
        typer.Option(
            "--blocks", help="5-hour billing blocks of Claude Code usage, with burn rate and projection."
        ),
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune", help="Archive (gzip JSONL) and delete readings older than the retention period."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --prune: report what would be removed, change nothing.")
    ] = False,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="With --prune: age cut-off such as 30d or 2w (default quota.retention_days, 30).",
        ),
    ] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only this account (name) or provider kind.")
    ] = None,
    since: Annotated[
        str,
        typer.Option(
            "--since", help="Readings and Claude Code usage from this far back (30d, 2026-11-01, last week)."
        ),
    ] = "30d",
    from_log: Annotated[
        bool, typer.Option("--from-log", help="Read readings from the daily JSONL log instead of the ledger.")
    ] = False,
    logs: Annotated[
        list[str] | None,
        typer.Option(
            "--logs",
            help="With --blocks: read Claude Code logs from PATH instead of the ledger (repeatable).",
        ),
    ] = None,
    json_out: common.JsonOpt = False,
    csv_: common.CsvOpt = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    now_opt: Annotated[
        str | None, typer.Option("--now", hidden=True, help="Pretend it is this time (RFC 3339).")
    ] = None,
) -> None:
    """Analyze quota readings: burn rate, weekly peaks, resets ahead, rotation, underspend, 5-hour blocks.

    With no section flag every section is shown. `--prune` archives and deletes old readings.
    """
    common.one_format(json_out, csv_)
    if (dry_run or older_than) and not prune:
        raise ValidationError("--dry-run/--older-than", "only apply together with --prune")
    chosen = {
        name
        for name, on in zip(SECTIONS, (burn_rate, weekly, stagger, rotation, underspend, blocks), strict=True)
        if on
    }
    if not chosen and not prune:
        chosen = set(SECTIONS)
    now = _now(now_opt)
    cfg, ledger = common.open_ledger_for(config, db)
    try:
        zone = _zone(cfg)
        start = parse_since(since, zone=zone, now=now)
        prune_before = None
        if prune:
            prune_before = (
                parse_since(older_than, zone=zone, now=now, option="--older-than")
                if older_than
                else now - timedelta(days=cfg.quota.retention_days)
            )
        out = analyze_report(
            cfg,
            ledger,
            sections=chosen,
            start=start,
            now=now,
            provider=provider,
            from_log=from_log,
            logs=logs,
            prune_before=prune_before,
            dry_run=dry_run,
        )
    finally:
        ledger.close()
    if json_out:
        common.print_json(out)
        return
    if csv_:
        common.print_csv(_csv_rows(out))
        for w in out["warnings"]:
            common.err_console.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)
        return
    _render(out, now, explicit=bool(chosen) and chosen != set(SECTIONS))


def _csv_rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Every shown section in one CSV: a `section` column, then the union of the sections' fields."""
    rows: list[dict[str, Any]] = []
    for name in SECTIONS:
        rows += [{"section": name, **r} for r in out.get(name) or []]
    rows += [{"section": "codex_blocks", **r} for r in out.get("codex_blocks") or []]
    if "prune" in out:
        rows.append({"section": "prune", **out["prune"]})
    return rows


# ---------------------------------------------------------------------------- rendering
def _render(out: dict[str, Any], now: datetime, *, explicit: bool) -> None:
    con = common.console
    for w in out.get("warnings", []):
        common.err_console.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)
    if "readings" in out and out["readings"] == 0 and not explicit:
        con.print(
            "No quota readings yet: run `llmbudget monitor` (or serve traffic through the proxy) first."
        )
    if "burn_rate" in out:
        t = Table(title="Burn rate (current cycle)", title_justify="left")
        for col in ("account", "window", "now", "change", "per hour", "runs out", "resets"):
            t.add_column(col, justify="right" if col in ("now", "change", "per hour") else "left")
        for r in out["burn_rate"]:
            runs_out = _when(_dt(r["exhaustion"]), now) if r["exhaustion"] else "-"
            if r["exhausts_before_reset"]:
                runs_out = f"[red]{runs_out}[/]"
            # + 0.0 turns a float's -0.0 into 0.0 so a flat window never reads "-0.00"
            per_h = "-" if r["per_hour_pct"] is None else f"{round(r['per_hour_pct'], 2) + 0.0:+.2f} pts"
            t.add_row(
                escape(r["backend"]),
                escape(r["window"]),
                f"{r['utilization_pct']:.1f}%",
                f"{round(r['change_pct'], 1) + 0.0:+.1f} pts",
                per_h,
                runs_out,
                _when(_dt(r["reset"]), now),
            )
        _print_table(t, out["burn_rate"])
    if "weekly" in out:
        t = Table(title="Weekly 7d utilization", title_justify="left")
        for col in ("account", "week", "readings", "peak", "average", "exhaustion events"):
            t.add_column(col, justify="right" if col in ("readings", "peak", "average") else "left")
        for r in out["weekly"]:
            ev = escape("; ".join(f"{e['start'][:16]}Z {e['reason']}" for e in r["exhaustions"]) or "-")
            t.add_row(
                escape(r["backend"]),
                r["week"],
                str(r["readings"]),
                _p(r["peak_7d_pct"]),
                _p(r["average_7d_pct"]),
                f"[red]{ev}[/]" if r["exhaustions"] else ev,
            )
        _print_table(t, out["weekly"])
    if "stagger" in out:
        t = Table(title="Resets in the next 48 h", title_justify="left")
        for col in ("account", "window", "used", "resets"):
            t.add_column(col, justify="right" if col == "used" else "left")
        for r in out["stagger"]:
            t.add_row(
                escape(r["backend"]),
                escape(r["window"]),
                _p(r["utilization_pct"]),
                _when(_dt(r["reset"]), now),
            )
        _print_table(t, out["stagger"])
    if "rotation" in out:
        t = Table(title="Rotation (use the first)", title_justify="left")
        for col in ("#", "account", "severity", "basis", "headroom", "binding", "resets", "why"):
            t.add_column(col, justify="right" if col in ("#", "headroom") else "left")
        for r in out["rotation"]:
            room = "-" if r["headroom"] is None else f"{r['headroom'] * 100:.1f}%"
            t.add_row(
                str(r["rank"]),
                escape(r["backend"]),
                r["severity"],
                escape(r.get("basis") or "-"),
                room,
                escape(r["binding"] or "-"),
                _when(_dt(r["reset"]), now),
                escape("; ".join(r["reasons"]) or "-"),
            )
        _print_table(t, out["rotation"])
    if "underspend" in out:
        if out["underspend"]:
            for r in out["underspend"]:
                con.print(f"[yellow]{escape(r['message'])}[/]", highlight=False, soft_wrap=True)
        else:
            con.print("Underspend: no 5h window about to reset with ≥ 40% unused.")
    if "blocks" in out:
        _render_blocks(out["blocks"], now)
    if out.get("codex_blocks"):
        _render_blocks(out["codex_blocks"], now, app="Codex CLI")
    if "prune" in out:
        p = out["prune"]
        verb = "would remove" if p["dry_run"] else "removed"
        con.print(
            f"Prune before {p['before']}: {verb} {p['ledger_readings']} ledger readings and "
            f"{p['log_readings']} log readings in {len(p['log_files'])} daily files.",
            highlight=False,
            soft_wrap=True,
        )
        for a in p["archives"]:
            con.print(f"  archived to {a}", markup=False, highlight=False, soft_wrap=True)


def _dt(s: str | None) -> datetime | None:
    return None if s is None else parse_timestamp(s)


def _p(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _print_table(t: Table, rows: list[Any]) -> None:
    if rows:
        common.console.print(t)
    else:
        common.console.print(f"{t.title}: nothing to show.")


def _short_model(model: str) -> str:
    """`claude-sonnet-4-5-20250929` → `sonnet-4-5`: the table has little room."""
    return re.sub(r"-\d{8}$", "", model.removeprefix("claude-"))


def _render_blocks(blocks: list[dict[str, Any]], now: datetime, app: str = "Claude Code") -> None:
    con = common.console
    if not blocks:
        con.print("5-hour blocks: no Claude Code usage; run `llmbudget import claude-code` first.")
        return
    t = Table(title=f"{app} 5-hour blocks (UTC)", title_justify="left")
    for col in ("block", "last", "entries", "input", "output", "cache w", "cache r", "cost", "models"):
        t.add_column(
            col,
            justify="left" if col in ("block", "last", "models") else "right",
            min_width=22 if col == "block" else None,
        )
    for b in blocks:
        label = f"{b['start'][:16].replace('T', ' ')}–{b['end'][11:16]}"
        if b["is_gap"]:
            t.add_row(f"[dim]{label} (gap)[/]", "", "", "", "", "", "", "", "")
            continue
        if b["is_active"]:
            label = f"[bold green]{label}\nACTIVE[/]"
        cost = format_usd(Decimal(b["cost_usd"]), 2)
        if b["unpriced_entries"]:
            cost += "*"
        t.add_row(
            label,
            (b["last_activity"] or "")[11:16],
            str(b["entries"]),
            _tokens(b["input_tokens"]),
            _tokens(b["output_tokens"]),
            _tokens(b["cache_write_tokens"]),
            _tokens(b["cache_read_tokens"]),
            cost,
            escape(", ".join(_short_model(m) for m in b["models"])),
        )
    con.print(t)
    unpriced = sum(b["unpriced_entries"] for b in blocks)
    if unpriced:
        what = "1 entry has" if unpriced == 1 else f"{unpriced} entries have"
        con.print(
            f"* {what} no price (an unknown model): left out of the cost, not counted "
            "as $0; see `llmbudget prices --missing`.",
            highlight=False,
            soft_wrap=True,
        )
    active = next((b for b in blocks if b["is_active"]), None)
    if active is None:
        con.print("No active block.")
        return
    rate, proj = active["burn_rate"], active["projection"]
    left = round((parse_timestamp(active["end"]) - now).total_seconds() / 60)
    con.print(
        f"Active block: {_tokens(active['tokens'])} tokens, {format_usd(Decimal(active['cost_usd']), 2)} so far; "
        f"{left // 60}h{left % 60:02d}m left.",
        highlight=False,
        soft_wrap=True,
    )
    if rate is None or proj is None:
        con.print("Burn rate: not enough activity yet.")
        return
    per_h = (
        "-" if rate["cost_per_hour_usd"] is None else format_usd(Decimal(rate["cost_per_hour_usd"]), 2) + "/h"
    )
    proj_cost = "-" if proj["cost_usd"] is None else format_usd(Decimal(proj["cost_usd"]), 2)
    con.print(
        f"Burn rate: {rate['tokens_per_minute']:,.0f} tokens/min, {per_h}; projected at block end: "
        f"{_tokens(proj['tokens'])} tokens, {proj_cost}.",
        highlight=False,
        soft_wrap=True,
    )
