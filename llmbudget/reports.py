"""Cost, event and session reports: pure functions over a `Ledger`, shared by the CLI and the JSON API.

Each report returns one JSON-ready dict; `llmbudget costs --json` prints it and `GET /api/costs`
answers with it, so the two never drift. Money is an exact decimal string (`cost_usd`) beside
integer nano-USD (`cost_nano`). A row whose every call was unpriced has `cost_usd: null`: its cost
is unknown, never $0; `unpriced_calls` counts such calls beside the priced total.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from . import attribution_table
from .errors import ValidationError
from .events import PRICE_STATUSES, SOURCES, STATUSES
from .money import from_nano
from .store.base import CostRow, Ledger, SessionRow
from .timeranges import month_window, parse_range, today_window

#: `--by` choices, CLI spelling (task-type), in the order help shows them: the attribution
#: fields' (`attribution_table`), the call's own dimensions, then the time buckets
BY_CHOICES = (*attribution_table.BY_CHOICES, "model", "backend", "day", "week", "month")
#: the ledger's name for each `--by` choice; the field names (`task_type`) are accepted too
_BY_TO_LEDGER = (
    dict(attribution_table.BY_CHOICES)
    | {f: f for f in attribution_table.BY_CHOICES.values()}
    | {c: c for c in ("model", "backend", "provider", "day", "week", "month", "hour")}
)
#: `--by` choices as a help text lists them
BY_HELP = ", ".join(BY_CHOICES[:-1]) + f" or {BY_CHOICES[-1]}"
TIME_BY = frozenset({"hour", "day", "week", "month"})

#: filter names accepted by the CLI (as --name) and the API (as ?name=), mapped to ledger fields
#: (the attribution fields' from `attribution_table`, then the call's own)
FILTER_NAMES: dict[str, str] = attribution_table.FILTER_NAMES | {
    "model": "model",
    "backend": "backend",
    "provider": "provider",
    "status": "status",
    "price-status": "price_status",
    "price_status": "price_status",
    "source": "source",
}
_ENUMS = {"status": STATUSES, "price_status": PRICE_STATUSES, "source": SOURCES}

DEFAULT_EVENTS_LIMIT = 100
DEFAULT_SESSIONS_LIMIT = 30


def iso(dt: datetime | None) -> str | None:
    """RFC 3339 UTC with a trailing Z, or None."""
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def usd_str(nanos: int) -> str:
    """Exact USD as a fixed-point string with nine decimals ("0.000000000", never "0E-9")."""
    return format(from_nano(nanos), "f")


def normalize_by(by: str | None, *, option: str = "--by") -> str | None:
    """Map a `--by` value to the ledger's dimension or time bucket (`task-type` -> `task_type`)."""
    if by is None or by == "":
        return None
    key = by.strip().lower()
    if key not in _BY_TO_LEDGER:
        raise ValidationError(option, f"cannot group by {by!r}; use one of {', '.join(BY_CHOICES)}")
    return _BY_TO_LEDGER[key]


def build_filters(values: Mapping[str, str | None], *, prefix: str = "--") -> dict[str, str]:
    """Exact-match ledger filters from CLI/API names; None and empty values are dropped.

    `prefix` is how an option is named in error messages ("--" on the CLI, "" in the API).
    """
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None or value == "":
            continue
        field = FILTER_NAMES.get(name)
        if field is None:
            raise ValidationError(
                f"{prefix}{name}", f"unknown filter; use one of {', '.join(sorted(FILTER_NAMES))}"
            )
        allowed = _ENUMS.get(field)
        if allowed is not None and value not in allowed:
            raise ValidationError(
                f"{prefix}{name}", f"unknown value {value!r}; one of {', '.join(sorted(allowed))}"
            )
        if field in out and out[field] != value:
            raise ValidationError(
                f"{prefix}{name}", f"given twice with different values ({out[field]!r}, {value!r})"
            )
        out[field] = value
    return out


def check_limit(limit: int | None, *, option: str = "--limit", maximum: int | None = None) -> int:
    """A positive row limit, at most `maximum` when one is set."""
    if limit is None or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError(option, f"must be a positive whole number, got {limit!r}")
    if maximum is not None and limit > maximum:
        raise ValidationError(option, f"must be at most {maximum}, got {limit}")
    return limit


# ---------------------------------------------------------------------- rows


def cost_row_dict(row: CostRow) -> dict[str, Any]:
    """A cost row for JSON: totals, `total_tokens`, and `cost_usd` null when every call was unpriced."""
    d = row.to_dict()
    d["total_tokens"] = row.input_tokens + row.output_tokens
    d["cost_usd"] = usd_str(row.cost_nano)
    if row.unpriced_calls and row.unpriced_calls >= row.calls:
        d["cost_usd"] = None
    return d


def session_row_dict(row: SessionRow) -> dict[str, Any]:
    """A session row for JSON: RFC 3339 times, `cost_usd` null when every call was unpriced."""
    d = row.to_dict()
    d["start"] = iso(row.start)
    d["end"] = iso(row.end)
    d["cost_usd"] = usd_str(row.cost_nano)
    if row.unpriced_calls and row.unpriced_calls >= row.calls:
        d["cost_usd"] = None
    return d


def _total(rows: list[CostRow]) -> CostRow:
    total = CostRow(key=None)
    for r in rows:
        total.calls += r.calls
        total.input_tokens += r.input_tokens
        total.cached_input_tokens += r.cached_input_tokens
        total.cache_write_tokens += r.cache_write_tokens
        total.output_tokens += r.output_tokens
        total.reasoning_tokens += r.reasoning_tokens
        total.cost_nano += r.cost_nano
        total.unpriced_calls += r.unpriced_calls
    return total


def _window(since: datetime | None, until: datetime | None) -> dict[str, Any]:
    return {"since": iso(since), "until": iso(until)}


# ---------------------------------------------------------------------- reports


def costs_report(
    ledger: Ledger,
    *,
    zone: ZoneInfo,
    now: datetime | None = None,
    since: str | None = None,
    until: str | None = None,
    by: str | None = None,
    filters: dict[str, str] | None = None,
    limit: int | None = None,
    since_option: str = "--since",
    until_option: str = "--until",
    by_option: str = "--by",
) -> dict[str, Any]:
    """The `costs` report.

    With no `by` and no range: the overview — today's spend, this month's spend and this
    month per backend (days and months in `zone`). Otherwise rows grouped by `by`
    (default `backend`) over [since, until); with no range a grouped report covers this month.
    `limit` keeps the costliest rows (the latest for day/week/month); the total still covers
    every row and `more_rows` says how many were left out.
    """
    now = now or datetime.now(UTC)
    filters = dict(filters or {})
    dim = normalize_by(by, option=by_option)
    start, end = parse_range(
        since, until, zone=zone, now=now, since_option=since_option, until_option=until_option
    )
    base: dict[str, Any] = {
        "report": "costs",
        "timezone": zone.key,
        "generated_at": iso(now),
        "filters": filters,
    }
    if dim is None and start is None and end is None:
        t0, t1 = today_window(zone, now)
        m0, m1 = month_window(zone, now)
        today = ledger.costs(since=t0, until=t1, by=None, tz=zone, filters=filters)
        per_backend = ledger.costs(since=m0, until=m1, by="backend", tz=zone, filters=filters)
        return {
            **base,
            "view": "overview",
            "today": {**_window(t0, t1), "total": cost_row_dict(_total(today))},
            "this_month": {**_window(m0, m1), "total": cost_row_dict(_total(per_backend))},
            "by_backend": {**_window(m0, m1), "rows": [cost_row_dict(r) for r in per_backend]},
        }
    if start is None and end is None:
        start, end = month_window(zone, now)
    dim = dim or "backend"
    rows = ledger.costs(since=start, until=end, by=dim, tz=zone, filters=filters)
    shown = rows
    if limit is not None and len(rows) > limit:
        # dimensions come costliest first; time buckets oldest first, and the latest matter most
        shown = rows[-limit:] if dim in TIME_BY else rows[:limit]
    return {
        **base,
        "view": "grouped",
        "by": dim,
        **_window(start, end),
        "total": cost_row_dict(_total(rows)),
        "rows": [cost_row_dict(r) for r in shown],
        "more_rows": len(rows) - len(shown),
    }


def events_report(
    ledger: Ledger,
    *,
    zone: ZoneInfo,
    now: datetime | None = None,
    since: str | None = None,
    until: str | None = None,
    filters: dict[str, str] | None = None,
    limit: int = DEFAULT_EVENTS_LIMIT,
    since_option: str = "--since",
    until_option: str = "--until",
) -> dict[str, Any]:
    """The `events` report: raw events newest first, at most `limit`, exact-match filters."""
    now = now or datetime.now(UTC)
    filters = dict(filters or {})
    start, end = parse_range(
        since, until, zone=zone, now=now, since_option=since_option, until_option=until_option
    )
    events = ledger.query(since=start, until=end, filters=filters, limit=limit, newest_first=True)
    return {
        "report": "events",
        "timezone": zone.key,
        "generated_at": iso(now),
        "filters": filters,
        **_window(start, end),
        "limit": limit,
        "events": [e.to_dict() for e in events],
    }


def sessions_report(
    ledger: Ledger,
    *,
    zone: ZoneInfo,
    now: datetime | None = None,
    since: str | None = None,
    limit: int = DEFAULT_SESSIONS_LIMIT,
    since_option: str = "--since",
) -> dict[str, Any]:
    """The `sessions` report: the most recent sessions by last activity, newest first."""
    now = now or datetime.now(UTC)
    start, _ = parse_range(since, None, zone=zone, now=now, since_option=since_option)
    rows = ledger.sessions(limit=limit, since=start)
    return {
        "report": "sessions",
        "timezone": zone.key,
        "generated_at": iso(now),
        "since": iso(start),
        "limit": limit,
        "sessions": [session_row_dict(r) for r in rows],
    }
