"""How the report commands print: Rich tables sized for the terminal, or CSV.

Each `print_*` takes the dict `llmbudget.reports` answered (what `--json` prints as is). A cost
is `unpriced` when every call was, never `$0`, and a `*` marks a cost some calls are not in.
"""

from __future__ import annotations

import sys
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rich import box
from rich.markup import escape
from rich.table import Table

from .. import export as exp
from ..events import UsageEvent
from ..money import format_usd
from . import common


def _int(n: int | None) -> str:
    return f"{n or 0:,}"


def _cost_cell(row: dict[str, Any]) -> str:
    """Cost for a table: `unpriced` when every call was, never `$0`; `*` when some calls are not in it."""
    if row.get("cost_usd") is None:
        return "unpriced" if row.get("unpriced_calls") else "-"
    return format_usd(Decimal(row["cost_usd"])) + ("*" if row.get("unpriced_calls") else "")


#: caption of a table with a `*` cost: the known part only
PARTIAL_NOTE = (
    "* known cost only: unpriced calls are not in it (`llmbudget prices --missing` lists their models)"
)


def _note_partial(table: Table, rows: list[dict[str, Any]]) -> None:
    if any(r.get("cost_usd") is not None and r.get("unpriced_calls") for r in rows):
        table.caption = PARTIAL_NOTE if not table.caption else f"{table.caption}\n{PARTIAL_NOTE}"


def _unpriced_cell(row: dict[str, Any]) -> str:
    n = row.get("unpriced_calls") or 0
    return f"{n:,}" if n else ""


def _local(ts: str | None, zone: ZoneInfo, *, short: bool = False) -> str:
    """A UTC RFC 3339 string in the report's zone; `short` drops the year and seconds for narrow terminals."""
    if not ts:
        return ""
    fmt = "%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S"
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(zone).strftime(fmt)


def _range_title(since: str | None, until: str | None, zone: ZoneInfo) -> str:
    a = _local(since, zone) if since else "the beginning"
    b = _local(until, zone) if until else "now"
    return f"{a} → {b} ({zone.key})"


def _cost_table(
    title: str, key_header: str, rows: list[dict[str, Any]], total: dict[str, Any] | None
) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(key_header, overflow="fold")
    # cached and reasoning columns only when some row has such tokens: narrow terminals stay readable
    extra = [f for f in ("cached_input_tokens", "reasoning_tokens") if any(r[f] for r in rows)]
    headers = {"cached_input_tokens": "Cached", "reasoning_tokens": "Reasoning"}
    for name in ("Calls", "Input", "Output", *(headers[f] for f in extra), "Cost", "Unpriced"):
        t.add_column(name, justify="right", no_wrap=True)

    def cells(r: dict[str, Any]) -> list[str]:
        return [
            _int(r["calls"]),
            _int(r["input_tokens"]),
            _int(r["output_tokens"]),
            *(_int(r[f]) for f in extra),
            _cost_cell(r),
            _unpriced_cell(r),
        ]

    for r in rows:
        t.add_row("(none)" if r["key"] is None else escape(str(r["key"])), *cells(r))
    if total is not None and len(rows) > 1:
        t.add_section()
        t.add_row("Total", *cells(total), style="bold")
    if not rows:
        t.caption = "no calls recorded in this range"
    _note_partial(t, [*rows, *([total] if total is not None else [])])
    return t


def _fitted_table(
    title: str, headers: list[str], rows: list[list[str]], *, fixed: set[str], right: set[str]
) -> Table:
    """A table whose `fixed` columns never shrink and whose text columns wrap, for narrow terminals."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, h in enumerate(headers):
        widest = max([len(h), *(len(r[i]) for r in rows)])
        t.add_column(
            h,
            justify="right" if h in right else "left",
            no_wrap=h in fixed,
            overflow="fold",
            min_width=widest if h in fixed else min(widest, max(len(h), 6)),
        )
    for r in rows:
        t.add_row(*(escape(c) for c in r))  # names, models and sessions are data, not markup
    return t


COST_COLUMNS = (
    "key",
    "calls",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_calls",
)


def print_costs(data: dict[str, Any], zone: ZoneInfo, csv_: bool) -> None:
    """What `costs_report` answered, as tables or (`csv_`) CSV."""
    if data["view"] == "overview":
        if csv_:
            rows = [
                {**data["today"]["total"], "section": "today", "key": "today", **_win(data["today"])},
                {
                    **data["this_month"]["total"],
                    "section": "this_month",
                    "key": "this_month",
                    **_win(data["this_month"]),
                },
            ]
            rows += [
                {**r, "section": "backend", **_win(data["by_backend"])} for r in data["by_backend"]["rows"]
            ]
            exp.write_rows_csv(rows, ("section", *COST_COLUMNS, "since", "until"), sys.stdout)
            return
        spend = Table(title=f"Spend ({zone.key})", title_justify="left")
        for name, just in (
            ("Period", "left"),
            ("Calls", "right"),
            ("Tokens", "right"),
            ("Cost", "right"),
            ("Unpriced", "right"),
        ):
            spend.add_column(name, justify=just)  # type: ignore[arg-type]
        for label, part in (("Today", data["today"]), ("This month", data["this_month"])):
            tot = part["total"]
            spend.add_row(
                label, _int(tot["calls"]), _int(tot["total_tokens"]), _cost_cell(tot), _unpriced_cell(tot)
            )
        _note_partial(spend, [data["today"]["total"], data["this_month"]["total"]])
        common.console.print(spend)
        common.console.print(
            _cost_table("This month by backend", "Backend", data["by_backend"]["rows"], None)
        )
        return
    if csv_:
        exp.write_rows_csv(data["rows"], COST_COLUMNS, sys.stdout)
        return
    by = data["by"]
    header = {"task_type": "Task type"}.get(by, by.capitalize())
    table = _cost_table(
        f"Costs by {by.replace('_', '-')}: {_range_title(data['since'], data['until'], zone)}",
        header,
        data["rows"],
        data["total"],
    )
    if data.get("more_rows"):
        more = f"{data['more_rows']:,} more rows not shown (--limit); the total covers them all"
        table.caption = more if not table.caption else f"{more}\n{table.caption}"
    common.console.print(table)


def _win(part: dict[str, Any]) -> dict[str, Any]:
    return {"since": part["since"], "until": part["until"]}


EVENT_TABLE = (
    ("Time", "timestamp"),
    ("Backend", "backend"),
    ("Model", "model"),
    ("Agent", "agent"),
    ("Session", "session"),
    ("In", "input_tokens"),
    ("Out", "output_tokens"),
    ("Cost", "cost_usd"),
    ("Status", "status"),
)


def print_events(data: dict[str, Any], zone: ZoneInfo, csv_: bool) -> None:
    """What `events_report` answered, as a table or (`csv_`) CSV."""
    if csv_:
        exp.write_events_csv((UsageEvent.from_dict(e) for e in data["events"]), sys.stdout)
        return
    narrow = common.console.width < 110  # drop the seconds rather than squeeze the names
    rows = []
    for e in data["events"]:
        cost = "unpriced" if e["cost_usd"] is None else format_usd(Decimal(e["cost_usd"]))
        rows.append(
            [
                _local(e["timestamp"], zone, short=narrow),
                e["backend"],
                e["model"],
                e["agent"] or "",
                e["session"] or "",
                _int(e["input_tokens"]),
                _int(e["output_tokens"]),
                cost,
                e["status"],
            ]
        )
    headers = [h for h, _ in EVENT_TABLE]
    if all(e["status"] == "ok" for e in data["events"]):  # the column only when something went wrong
        headers.pop()
        rows = [r[:-1] for r in rows]
    t = _fitted_table(
        f"Events, newest first ({zone.key})",
        headers,
        rows,
        fixed={"Time", "In", "Out", "Cost"},
        right={"In", "Out", "Cost"},
    )
    if not data["events"]:
        t.caption = "no events match"
    common.console.print(t)


SESSION_COLUMNS = (
    "session",
    "start",
    "end",
    "calls",
    "input_tokens",
    "output_tokens",
    "tokens",
    "cost_usd",
    "unpriced_calls",
    "agents",
)


def print_sessions(data: dict[str, Any], zone: ZoneInfo, csv_: bool) -> None:
    """What `sessions_report` answered, as a table or (`csv_`) CSV."""
    if csv_:
        csv_rows = [{**s, "agents": ";".join(s["agents"])} for s in data["sessions"]]
        exp.write_rows_csv(csv_rows, SESSION_COLUMNS, sys.stdout)
        return
    narrow = common.console.width < 110
    with_unpriced = any(x["unpriced_calls"] for x in data["sessions"])
    headers = [
        "Session ID",
        "Start",
        "End",
        "Tokens",
        "Cost",
        *(["Unpriced"] if with_unpriced else []),
        "Agents",
    ]
    rows: list[list[str]] = []
    for x in data["sessions"]:
        row = [
            x["session"],
            _local(x["start"], zone, short=narrow),
            _local(x["end"], zone, short=narrow),
            _int(x["tokens"]),
            _cost_cell(x),
        ]
        if with_unpriced:
            row.append(_unpriced_cell(x))
        rows.append([*row, ", ".join(x["agents"])])
    t = _fitted_table(
        f"Sessions, most recent first ({zone.key})",
        headers,
        rows,
        fixed={"Start", "End", "Tokens", "Cost", "Unpriced"},
        right={"Tokens", "Cost", "Unpriced"},
    )
    if not data["sessions"]:
        t.caption = "no sessions recorded"
    common.console.print(t)
