"""Reports over a real ledger: days and months in the configured zone (DST included), grouping, filters, sessions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from llmbudget.errors import ValidationError
from llmbudget.events import UsageEvent
from llmbudget.reports import (
    BY_CHOICES,
    build_filters,
    check_limit,
    costs_report,
    events_report,
    normalize_by,
    sessions_report,
)
from llmbudget.store import Ledger, open_ledger

BERLIN = ZoneInfo("Europe/Berlin")
UTCZ = ZoneInfo("UTC")
#: Monday 31 March 2025, 12:00 in Berlin (CEST); Berlin sprang forward on Sunday 30 March
NOW = datetime(2025, 3, 31, 10, 0, tzinfo=UTC)


def ev(ts: datetime, backend: str, cost: str | None, **kw: object) -> UsageEvent:
    model = kw.pop("model", {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5"}.get(backend, "mystery"))
    return UsageEvent(
        backend=backend,
        model=str(model),
        timestamp=ts,
        input_tokens=int(kw.pop("inp", 1000)),  # type: ignore[call-overload]
        output_tokens=int(kw.pop("out", 100)),  # type: ignore[call-overload]
        cost_usd=None if cost is None else Decimal(cost),
        price_status="unpriced" if cost is None else "priced",
        **kw,
    )  # type: ignore[arg-type]


def u(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


EVENTS = [
    ev(u(2025, 3, 31, 8, 0), "openai", "0.5", agent="a", session="s1", tier="fast", task_type="chat"),
    # 00:30 on 31 March in Berlin: today there, yesterday in UTC
    ev(u(2025, 3, 30, 22, 30), "anthropic", "1.25", agent="b", session="s2", tier="smart", task_type="code"),
    # 23:30 on 30 March in Berlin: yesterday
    ev(u(2025, 3, 30, 21, 30), "openai", "2", agent="a", session="s1", tier="fast", status="error"),
    # 01:30 CET on 30 March, before the clocks went forward
    ev(u(2025, 3, 30, 0, 30), "openai", "16", agent="d", session="s3"),
    # 00:30 on 1 March in Berlin: this month there, February in UTC
    ev(u(2025, 2, 28, 23, 30), "openai", "4", agent="b", session="s4"),
    # 23:30 on 28 February in Berlin: last month
    ev(u(2025, 2, 28, 22, 30), "openai", "8", agent="b", session="s4"),
    # unpriced, today
    ev(u(2025, 3, 31, 9, 0), "local", None, agent="c", session="s2", inp=50, out=5),
]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = open_ledger(f"sqlite:///{tmp_path / 'reports.db'}")
    led.record_many(EVENTS)
    yield led
    led.close()


@pytest.fixture
def any_ledger(ledger_url: str) -> Iterator[Ledger]:
    led = open_ledger(ledger_url)
    led.record_many(EVENTS)
    yield led
    led.close()


def test_overview_follows_the_zone_across_midnight_month_and_dst(any_ledger: Ledger) -> None:
    r = costs_report(any_ledger, zone=BERLIN, now=NOW)
    assert r["view"] == "overview" and r["timezone"] == "Europe/Berlin"
    today, month = r["today"], r["this_month"]
    assert today["since"] == "2025-03-30T22:00:00Z" and today["until"] == "2025-03-31T22:00:00Z"
    assert today["total"]["calls"] == 3
    assert today["total"]["cost_usd"] == "1.750000000"
    assert today["total"]["unpriced_calls"] == 1
    assert month["since"] == "2025-02-28T23:00:00Z"
    assert month["total"]["calls"] == 6
    assert Decimal(month["total"]["cost_usd"]) == Decimal("23.75")
    backends = {row["key"]: row for row in r["by_backend"]["rows"]}
    assert Decimal(backends["openai"]["cost_usd"]) == Decimal("22.5")
    assert backends["anthropic"]["calls"] == 1
    # the unpriced backend shows a count and no cost, never $0
    assert backends["local"]["cost_usd"] is None
    assert backends["local"]["unpriced_calls"] == 1
    # the same ledger read in UTC puts the night events on other days and months
    r_utc = costs_report(any_ledger, zone=UTCZ, now=NOW)
    assert r_utc["today"]["total"]["calls"] == 2
    assert Decimal(r_utc["this_month"]["total"]["cost_usd"]) == Decimal("19.75")


def test_by_day_has_a_23_hour_day(ledger: Ledger) -> None:
    r = costs_report(ledger, zone=BERLIN, now=NOW, by="day", since="2025-03-30", until="2025-03-31")
    assert r["since"] == "2025-03-29T23:00:00Z"  # midnight CET
    assert r["until"] == "2025-03-31T22:00:00Z"  # end of 31 March, CEST: through the end of that day
    days = {row["key"]: row for row in r["rows"]}
    assert set(days) == {"2025-03-30", "2025-03-31"}
    assert Decimal(days["2025-03-30"]["cost_usd"]) == Decimal("18")
    assert days["2025-03-31"]["calls"] == 3
    assert r["total"]["calls"] == 5


def test_by_month_and_week(ledger: Ledger) -> None:
    r = costs_report(ledger, zone=BERLIN, now=NOW, by="month", since="2025-01")
    months = {row["key"]: Decimal(row["cost_usd"]) for row in r["rows"]}
    assert months == {"2025-02": Decimal("8"), "2025-03": Decimal("23.75")}
    r = costs_report(ledger, zone=BERLIN, now=NOW, by="week", since="2025-02-01")
    weeks = {row["key"]: row["calls"] for row in r["rows"]}
    # Monday 31 March starts ISO week 14; the night of 30 March is still week 13
    assert weeks == {"2025-W09": 2, "2025-W13": 2, "2025-W14": 3}


@pytest.mark.parametrize(
    "by, key, calls",
    [
        ("agent", "b", 3),
        ("session", "s4", 2),
        ("tier", "fast", 2),
        ("task-type", "code", 1),
        ("model", "gpt-4o", 5),
        ("backend", "anthropic", 1),
    ],
)
def test_group_by_dimension(ledger: Ledger, by: str, key: str, calls: int) -> None:
    r = costs_report(ledger, zone=BERLIN, now=NOW, by=by, since="2025-01-01")
    assert r["by"] == by.replace("-", "_")
    rows = {row["key"]: row for row in r["rows"]}
    assert rows[key]["calls"] == calls
    assert sum(row["calls"] for row in r["rows"]) == len(EVENTS) == r["total"]["calls"]


def test_grouped_without_range_covers_this_month(ledger: Ledger) -> None:
    r = costs_report(ledger, zone=BERLIN, now=NOW, by="agent")
    assert (r["since"], r["until"]) == ("2025-02-28T23:00:00Z", "2025-03-31T22:00:00Z")
    assert r["total"]["calls"] == 6  # last month's event is out
    # a range without --by groups by backend
    r = costs_report(ledger, zone=BERLIN, now=NOW, since="yesterday", until="yesterday")
    assert r["by"] == "backend"
    assert {row["key"]: row["calls"] for row in r["rows"]} == {"openai": 2}


def test_filters_apply_to_costs(ledger: Ledger) -> None:
    r = costs_report(
        ledger, zone=BERLIN, now=NOW, by="backend", since="2025-01-01", filters=build_filters({"agent": "a"})
    )
    assert r["filters"] == {"agent": "a"}
    assert r["total"]["calls"] == 2
    assert Decimal(r["total"]["cost_usd"]) == Decimal("2.5")
    r = costs_report(ledger, zone=BERLIN, now=NOW, filters=build_filters({"status": "error"}))
    assert r["this_month"]["total"]["calls"] == 1


def test_events_newest_first_with_limit_and_filters(ledger: Ledger) -> None:
    r = events_report(ledger, zone=BERLIN, now=NOW)
    stamps = [e["timestamp"] for e in r["events"]]
    assert stamps == sorted(stamps, reverse=True)
    assert len(stamps) == len(EVENTS)
    assert r["events"][0]["agent"] == "c" and r["events"][0]["cost_usd"] is None
    r = events_report(ledger, zone=BERLIN, now=NOW, limit=2)
    assert [e["timestamp"] for e in r["events"]] == stamps[:2]
    r = events_report(ledger, zone=BERLIN, now=NOW, filters=build_filters({"task-type": "chat"}))
    assert [e["task_type"] for e in r["events"]] == ["chat"]
    r = events_report(ledger, zone=BERLIN, now=NOW, since="today")
    assert len(r["events"]) == 3
    r = events_report(ledger, zone=BERLIN, now=NOW, until="2025-02-28")
    assert [e["cost_usd"] for e in r["events"]] == ["8.000000000"]


def test_sessions_report(ledger: Ledger) -> None:
    r = sessions_report(ledger, zone=BERLIN, now=NOW)
    by_id = {s["session"]: s for s in r["sessions"]}
    assert list(by_id) == ["s2", "s1", "s3", "s4"]  # by last activity, newest first
    s2 = by_id["s2"]
    assert s2["agents"] == ["b", "c"]
    assert s2["start"] == "2025-03-30T22:30:00Z" and s2["end"] == "2025-03-31T09:00:00Z"
    assert s2["unpriced_calls"] == 1 and Decimal(s2["cost_usd"]) == Decimal("1.25")
    assert s2["tokens"] == 1100 + 55
    assert len(sessions_report(ledger, zone=BERLIN, now=NOW, limit=2)["sessions"]) == 2
    recent = sessions_report(ledger, zone=BERLIN, now=NOW, since="today")["sessions"]
    assert {s["session"] for s in recent} == {"s1", "s2"}


def test_session_with_only_unpriced_calls_has_no_cost(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'u.db'}") as led:
        led.record_many([ev(u(2025, 3, 31, 9), "local", None, session="only-unpriced")])
        s = sessions_report(led, zone=BERLIN, now=NOW)["sessions"][0]
        assert s["cost_usd"] is None and s["unpriced_calls"] == 1


def test_empty_ledger_overview_is_zero_not_missing(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'empty.db'}") as led:
        r = costs_report(led, zone=BERLIN, now=NOW)
    assert r["today"]["total"]["calls"] == 0
    assert r["today"]["total"]["cost_usd"] == "0.000000000"
    assert r["by_backend"]["rows"] == []


def test_by_choices_and_bad_by() -> None:
    assert normalize_by("task-type") == "task_type"
    assert normalize_by(None) is None
    for choice in BY_CHOICES:
        assert normalize_by(choice) is not None
    with pytest.raises(ValidationError) as info:
        normalize_by("colour")
    assert info.value.field == "--by" and "task-type" in str(info.value)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"status": "okay"}, "--status"),
        ({"colour": "red"}, "--colour"),
        ({"task-type": "a", "task_type": "b"}, "--task_type"),
    ],
)
def test_bad_filters(values: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build_filters(values)
    assert info.value.field == field


def test_filters_drop_empty_values() -> None:
    assert build_filters({"agent": None, "team": "", "task": "t1", "task-type": "x"}) == {
        "task_id": "t1",
        "task_type": "x",
    }


@pytest.mark.parametrize("bad", [0, -1, None, True])
def test_bad_limits(bad: object) -> None:
    with pytest.raises(ValidationError):
        check_limit(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        check_limit(101, maximum=100)
    assert check_limit(5) == 5


def test_bad_range_is_a_validation_error(ledger: Ledger) -> None:
    with pytest.raises(ValidationError) as info:
        costs_report(ledger, zone=BERLIN, now=NOW, since="2025-03-10", until="2025-03-01")
    assert info.value.field == "--until"


def test_costs_limit_keeps_costliest_or_latest_and_the_full_total(ledger: Ledger) -> None:
    full = costs_report(ledger, zone=BERLIN, now=NOW, by="agent", since="2025-01-01")
    r = costs_report(ledger, zone=BERLIN, now=NOW, by="agent", since="2025-01-01", limit=2)
    assert [row["key"] for row in r["rows"]] == [row["key"] for row in full["rows"]][:2]
    assert r["rows"][0]["key"] == "d"  # $16, the costliest agent
    assert r["more_rows"] == len(full["rows"]) - 2
    assert r["total"] == full["total"]
    days = costs_report(ledger, zone=BERLIN, now=NOW, by="day", since="2025-01-01", limit=1)
    assert [row["key"] for row in days["rows"]] == ["2025-03-31"]  # the latest period
    assert full["more_rows"] == 0
