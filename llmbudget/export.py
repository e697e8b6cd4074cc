"""CSV and JSON writers for events and report rows, streaming, and safe to open in a spreadsheet.

CSV formula injection (OWASP "CSV Injection"): a spreadsheet runs a cell that starts with
`=`, `+`, `-` or `@` (and some also one starting with a tab or carriage return) as a formula.
Every *text* cell that starts with one of those characters, after any leading spaces, gets a
leading `'`, which spreadsheets show as text and which is easy to strip again. This includes text
that merely looks like a negative number (an agent named `-1`): attacks such as
`-2+3+cmd|' /C calc'!A0` start that way, so text is never trusted by its looks. Numeric
columns (token counts, durations, costs) are written by us from ints and Decimals, are never
negative (UsageEvent rejects negative values), and are left untouched, so sums in a
spreadsheet keep working. Quotes and separators are escaped by the csv module as usual.

JSON: `write_json_lines` writes one event per line (JSON Lines: the audit log's shape, which
`llmbudget import` reads back); `write_json_array` streams one JSON array.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from decimal import Decimal
from typing import IO

from .events import UsageEvent
from .money import decimal_str

#: characters that make a spreadsheet evaluate a cell (OWASP), including tab and carriage return
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

#: event columns in CSV exports: UsageEvent's fields in declaration order (tags as a JSON object)
EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageEvent))


def neutralize(text: str) -> str:
    """Prefix `'` to text a spreadsheet would run as a formula; other text is returned unchanged."""
    if not text:
        return text
    if text[0] in FORMULA_PREFIXES:
        return "'" + text
    stripped = text.lstrip(" ")
    if stripped and stripped[0] in FORMULA_PREFIXES:  # " =1+1" is a formula to some spreadsheets
        return "'" + text
    return text


def csv_cell(value: object) -> str | int | float:
    """One CSV cell: numbers as they are, None empty, booleans as true/false, text neutralized."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return decimal_str(value)  # `0.000000000`, never `0E-9`: spreadsheets and the JSON agree
    if isinstance(value, int | float):
        return value
    if isinstance(value, Mapping | list | tuple):
        return neutralize(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))
    return neutralize(str(value))


def _event_cells(event: UsageEvent) -> list[str | int | float]:
    d = event.to_dict()
    # cost_usd arrives as an exact decimal string; keep it numeric so it is never neutralized
    d["cost_usd"] = None if event.cost_usd is None else event.cost_usd
    return [csv_cell(d[c]) for c in EVENT_COLUMNS]


def write_events_csv(
    events: Iterable[UsageEvent], out: IO[str], *, on_row: Callable[[int], None] | None = None
) -> int:
    """Stream events as CSV (header first); returns the number of rows. `on_row(n)` after each row."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(EVENT_COLUMNS)
    n = 0
    for ev in events:
        w.writerow(_event_cells(ev))
        n += 1
        if on_row is not None:
            on_row(n)
    return n


def write_json_lines(
    events: Iterable[UsageEvent], out: IO[str], *, on_row: Callable[[int], None] | None = None
) -> int:
    """Stream events as JSON Lines (one `UsageEvent.to_dict()` per line); returns the count."""
    n = 0
    for ev in events:
        out.write(json.dumps(ev.to_dict(), ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
        n += 1
        if on_row is not None:
            on_row(n)
    return n


def write_json_array(
    events: Iterable[UsageEvent], out: IO[str], *, on_row: Callable[[int], None] | None = None
) -> int:
    """Stream events as one JSON array without holding them all in memory; returns the count."""
    n = 0
    out.write("[")
    for ev in events:
        out.write(",\n" if n else "\n")
        out.write(json.dumps(ev.to_dict(), ensure_ascii=False, separators=(",", ":")))
        n += 1
        if on_row is not None:
            on_row(n)
    out.write("\n]\n" if n else "]\n")
    return n


def write_rows_csv(rows: Iterable[Mapping[str, object]], columns: Sequence[str], out: IO[str]) -> int:
    """Report rows (dicts) as CSV with the given columns, neutralized like events; returns the count."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    n = 0
    for row in rows:
        w.writerow([csv_cell(row.get(c)) for c in columns])
        n += 1
    return n
