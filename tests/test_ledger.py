"""The ledger contract, run against SQLite and PostgreSQL (the `ledger_url` fixture)."""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from llmbudget.errors import StorageError, ValidationError
from llmbudget.events import UsageEvent
from llmbudget.store import Ledger, open_ledger
from llmbudget.store.buckets import bucket_key, to_us
from llmbudget.store.jsonl import read_events
from llmbudget.store.sqlite import READER_CACHE_KIB, WRITER_CACHE_KIB, SQLiteLedger

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def ev(minutes: float = 0, **kw: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "backend": "openai",
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": Decimal("0.001"),
        "price_status": "priced",
    }
    base.update(kw)
    base.setdefault("timestamp", T0 + timedelta(minutes=minutes))
    return UsageEvent(**base)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger.open(ledger_url, flush_interval_s=0.05)
    try:
        yield led
    finally:
        led.close()


def test_roundtrip_every_field(ledger: Ledger) -> None:
    e = UsageEvent(
        backend="anthropic",
        model="claude-sonnet-4-5",
        provider="anthropic",
        request_model="sonnet",
        input_tokens=1200,
        cached_input_tokens=300,
        cache_write_tokens=100,
        output_tokens=500,
        reasoning_tokens=120,
        cost_usd=Decimal("0.012345678"),
        price_status="override",
        agent="a1",
        session="s1",
        user="ann",
        team="core",
        task_id="T-1",
        task_type="code",
        tier="deep",
        tags={"project": "x", "env": "ci"},
        status="interrupted",
        http_status=200,
        streamed=True,
        duration_ms=1234.5,
        ttft_ms=88.25,
        source="proxy",
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )
    unpriced = ev(model="mystery", cost_usd=None, price_status="unpriced")
    assert ledger.record_many([e, unpriced]) == 2
    got = ledger.get(e.id)
    assert got is not None
    assert got.to_dict() == e.to_dict()
    back = ledger.get(unpriced.id)
    assert back is not None and back.cost_usd is None and back.price_status == "unpriced"
    assert ledger.get("no-such-id") is None


def test_record_is_idempotent_and_rollups_count_only_new_rows(ledger: Ledger) -> None:
    events = [ev(i, agent=f"a{i % 3}", session=f"s{i % 2}") for i in range(50)]
    assert ledger.record_many(events) == 50
    assert ledger.record_many(events) == 0
    assert ledger.record_many([*events[:10], ev(99)]) == 1
    for e in events[:20]:  # the queued path too
        ledger.record(e)
    ledger.flush()
    assert ledger.count() == 51
    (total,) = ledger.costs(since=None, until=None)
    assert total.calls == 51
    assert total.cost_nano == 51 * 1_000_000
    assert total.input_tokens == 51 * 100
    sessions = {s.session: s for s in ledger.sessions()}
    assert sessions["s0"].calls == 25 and sessions["s1"].calls == 25


def test_same_id_twice_in_one_batch_is_stored_once(ledger: Ledger, ledger_url: str) -> None:
    e = ev(1)
    assert ledger.record_many([e, e, e]) == 1
    (total,) = ledger.costs(since=None, until=None)
    assert total.calls == 1


@pytest.mark.parametrize("n", [1, 3, 4, 21, 256, 341, 600])
def test_a_batch_of_any_size_is_stored_whole_and_every_field_survives(ledger: Ledger, n: int) -> None:
    # batches go in as multi-row statements of fixed sizes: every size must come out exactly
    events = [ev(i / 10, agent=f"a{i % 7}", session=f"s{i % 5}", input_tokens=i + 1) for i in range(n)]
    assert ledger.record_many(events) == n
    half = [*events[: n // 2], ev(999, input_tokens=7)]  # mostly stored already: only one is new
    assert ledger.record_many(half) == 1
    stored = {e.id: e for e in ledger.query(limit=n + 10)}
    assert len(stored) == n + 1
    for e in events:
        assert stored[e.id].input_tokens == e.input_tokens and stored[e.id].agent == e.agent
    (total,) = ledger.costs(since=None, until=None)
    assert total.calls == n + 1
    assert total.input_tokens == n * (n + 1) // 2 + 7


def test_record_queues_and_flush_makes_durable(ledger_url: str) -> None:
    led = open_ledger(ledger_url, batch_size=7, flush_interval_s=10)  # only size or flush() writes
    events = [ev(i) for i in range(30)]
    for e in events:
        led.record(e)
    led.flush()
    assert led.count() == 30
    led.record(ev(100))
    led.close()  # close flushes
    with open_ledger(ledger_url) as again:
        assert again.count() == 31
    with pytest.raises(StorageError):
        led.record(ev(101))


def test_concurrent_record_from_threads_loses_nothing(ledger: Ledger) -> None:
    def work(k: int) -> None:
        for i in range(500):
            ledger.record(ev(i, agent=f"t{k}"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.flush()
    assert ledger.count() == 3000
    rows = {r.key: r.calls for r in ledger.costs(since=None, until=None, by="agent")}
    assert rows == {f"t{k}": 500 for k in range(6)}


def test_query_filters_limit_and_order(ledger: Ledger) -> None:
    events = [ev(i, agent="a" if i % 2 else "b", team="t1" if i < 5 else None) for i in range(10)]
    ledger.record_many(events)
    newest = ledger.query(limit=3)
    assert [e.id for e in newest] == [e.id for e in events[::-1][:3]]
    only_a = ledger.query(filters={"agent": "a"}, limit=None)
    assert {e.id for e in only_a} == {e.id for e in events if e.agent == "a"}
    ranged = ledger.query(
        since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5), newest_first=False
    )
    assert [e.id for e in ranged] == [e.id for e in events[2:5]]
    assert ledger.count(filters={"team": "t1", "agent": "b"}) == 3
    assert ledger.count(since=T0 + timedelta(minutes=8)) == 2
    assert [e.id for e in ledger.iter_events(batch=3)] == [e.id for e in events]
    assert [e.id for e in ledger.iter_events(filters={"agent": "b"}, batch=2)] == [
        e.id for e in events if e.agent == "b"
    ]
    with pytest.raises(ValidationError, match="nope"):
        ledger.query(filters={"nope": "x"})


def _expected(
    events: list[UsageEvent], since: datetime, until: datetime, by: str | None, tz: ZoneInfo
) -> dict[Any, tuple[int, int, int, int]]:
    out: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in events:
        if not since <= e.timestamp < until:
            continue
        if by in ("hour", "day", "week", "month"):
            key = bucket_key(to_us(e.timestamp), by, tz)
        elif by is None:
            key = None
        else:
            key = getattr(e, by)
        acc = out[key]
        acc[0] += 1
        acc[1] += e.input_tokens
        acc[2] += e.cost_nano or 0
        acc[3] += 1 if e.cost_nano is None else 0
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def _got(rows: list[Any]) -> dict[Any, tuple[int, int, int, int]]:
    return {r.key: (r.calls, r.input_tokens, r.cost_nano, r.unpriced_calls) for r in rows}


def _spread_events(n: int, start: datetime, days: float, seed: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ts = start + timedelta(seconds=rng.uniform(0, days * 86400))
        priced = rng.random() < 0.8
        out.append(
            ev(
                0,
                timestamp=ts,
                agent=rng.choice(["a", "b", None]),
                session=rng.choice(["s1", "s2"]),
                backend=rng.choice(["openai", "claude"]),
                input_tokens=rng.randrange(1, 1000),
                cost_usd=Decimal(rng.randrange(0, 10**6)) / 10**9 if priced else None,
                price_status="priced" if priced else "unpriced",
            )
        )
    return out


@pytest.mark.parametrize("tzname", ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC"])
def test_costs_match_raw_events_in_every_bucket(ledger: Ledger, tzname: str) -> None:
    """Rollup-based reports equal a brute-force sum, across DST switches and odd-offset zones."""
    tz = ZoneInfo(tzname)
    # spans the 2026 EU (Mar 29) and US (Mar 8) spring-forward and a month boundary
    events = _spread_events(600, datetime(2026, 2, 25, tzinfo=UTC), 36, seed=len(tzname))
    ledger.record_many(events)
    ranges = [
        (datetime(2026, 2, 25, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)),
        (
            datetime(2026, 3, 1, 7, 17, 3, tzinfo=UTC),
            datetime(2026, 3, 30, 22, 41, tzinfo=UTC),
        ),  # ragged edges
        (datetime(2026, 3, 1, tzinfo=tz), datetime(2026, 4, 1, tzinfo=tz)),  # one local month
    ]
    for since, until in ranges:
        for by in (None, "backend", "agent", "session", "day", "week", "month", "hour"):
            got = _got(ledger.costs(since=since, until=until, by=by, tz=tz))
            assert got == _expected(events, since, until, by, tz), (tzname, since, until, by)
    filtered = _got(
        ledger.costs(since=ranges[1][0], until=ranges[1][1], by="day", tz=tz, filters={"backend": "claude"})
    )
    assert filtered == _expected([e for e in events if e.backend == "claude"], *ranges[1], "day", tz)


def test_costs_dst_days_and_month_boundaries_berlin(ledger: Ledger) -> None:
    tz = ZoneInfo("Europe/Berlin")
    stamps = {
        "2026-03-28T22:59:00Z": "2026-03-28",  # 23:59 CET
        "2026-03-28T23:30:00Z": "2026-03-29",  # 00:30 CET on the day clocks spring forward
        "2026-03-29T21:59:00Z": "2026-03-29",  # 23:59 CEST: that local day had 23 hours
        "2026-03-29T22:00:00Z": "2026-03-30",
        "2026-10-24T22:30:00Z": "2026-10-25",  # 00:30 CEST on the day clocks fall back
        "2026-10-25T22:59:00Z": "2026-10-25",  # 23:59 CET: that local day had 25 hours
        "2026-10-25T23:00:00Z": "2026-10-26",
        "2026-02-28T22:59:59Z": "2026-02-28",
        "2026-02-28T23:00:00Z": "2026-03-01",  # local midnight opening March
    }
    events = [ev(0, timestamp=datetime.fromisoformat(s)) for s in stamps]
    ledger.record_many(events)
    since, until = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    days = {r.key: r.calls for r in ledger.costs(since=since, until=until, by="day", tz=tz)}
    want: dict[str, int] = defaultdict(int)
    for day in stamps.values():
        want[day] += 1
    assert days == dict(want)
    months = {r.key: r.calls for r in ledger.costs(since=since, until=until, by="month", tz=tz)}
    assert months == {"2026-02": 1, "2026-03": 5, "2026-10": 3}
    # a local-day window in Berlin on the short day holds exactly its events
    short_day = ledger.costs(since=datetime(2026, 3, 29, tzinfo=tz), until=datetime(2026, 3, 30, tzinfo=tz))
    assert short_day[0].calls == 2


def test_costs_new_york_midnight_and_kolkata_half_hours(ledger: Ledger) -> None:
    ny, kol = ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")
    events = [
        ev(0, timestamp=datetime(2026, 3, 8, 4, 59, tzinfo=UTC)),  # 23:59 EST Mar 7
        ev(0, timestamp=datetime(2026, 3, 8, 5, 0, tzinfo=UTC)),  # 00:00 EST Mar 8 (DST starts 02:00)
        ev(0, timestamp=datetime(2026, 3, 9, 3, 59, tzinfo=UTC)),  # 23:59 EDT Mar 8
        ev(0, timestamp=datetime(2026, 3, 9, 4, 0, tzinfo=UTC)),  # 00:00 EDT Mar 9
        ev(0, timestamp=datetime(2026, 3, 31, 18, 29, 59, tzinfo=UTC)),  # 23:59:59 IST Mar 31
        ev(0, timestamp=datetime(2026, 3, 31, 18, 30, tzinfo=UTC)),  # 00:00 IST Apr 1
    ]
    ledger.record_many(events)
    since, until = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 5, tzinfo=UTC)
    ny_days = {r.key: r.calls for r in ledger.costs(since=since, until=until, by="day", tz=ny)}
    assert ny_days == {"2026-03-07": 1, "2026-03-08": 2, "2026-03-09": 1, "2026-03-31": 2}
    kol_months = {r.key: r.calls for r in ledger.costs(since=since, until=until, by="month", tz=kol)}
    assert kol_months == {"2026-03": 5, "2026-04": 1}
    kol_days = {r.key: r.calls for r in ledger.costs(since=since, until=until, by="day", tz=kol)}
    assert kol_days["2026-03-31"] == 1 and kol_days["2026-04-01"] == 1


def test_costs_by_dimension_sorted_and_validated(ledger: Ledger) -> None:
    ledger.record_many(
        [
            ev(0, agent="cheap", cost_usd=Decimal("0.001")),
            ev(1, agent="dear", cost_usd=Decimal("0.5")),
            ev(2, agent=None, cost_usd=None, price_status="unpriced"),
        ]
    )
    rows = ledger.costs(since=None, until=None, by="agent")
    assert [r.key for r in rows] == ["dear", "cheap", None]
    assert rows[2].unpriced_calls == 1 and rows[2].cost_nano == 0
    assert [r.key for r in ledger.costs(since=None, until=None, by="task-type")] == [None]
    with pytest.raises(ValidationError, match="by"):
        ledger.costs(since=None, until=None, by="colour")
    assert ledger.costs(since=T0 + timedelta(days=400), until=T0 + timedelta(days=401)) == []


def test_update_costs_adjusts_rollups_and_sessions_exactly(ledger: Ledger) -> None:
    events = [
        ev(i, model="mystery", cost_usd=None, price_status="unpriced", session="s", agent="x")
        for i in range(5)
    ] + [ev(10, session="s")]
    ledger.record_many(events)
    [m] = ledger.unpriced_models()
    assert (m.model, m.calls, m.input_tokens) == ("mystery", 5, 500)
    changed = ledger.update_costs(
        [(e.id, 2_000_000, "override") for e in events[:5]] + [("missing", 1, "priced")]
    )
    assert changed == 5
    assert ledger.update_costs([(events[0].id, 2_000_000, "override")]) == 0  # nothing changes
    assert ledger.unpriced_models() == []
    (total,) = ledger.costs(since=None, until=None)
    assert (total.calls, total.cost_nano, total.unpriced_calls) == (6, 11_000_000, 0)
    by_status = {r.key: r.calls for r in ledger.costs(since=None, until=None, by="price_status")}
    assert by_status == {"override": 5, "priced": 1}
    # the raw path (a session filter reads events) agrees with the rollups
    (raw,) = ledger.costs(since=None, until=None, filters={"session": "s"})
    assert (raw.calls, raw.cost_nano, raw.unpriced_calls) == (6, 11_000_000, 0)
    [s] = ledger.sessions()
    assert (s.cost_nano, s.unpriced_calls) == (11_000_000, 0)
    assert ledger.get(events[0].id).price_status == "override"  # type: ignore[union-attr]
    # and back to unpriced
    ledger.update_costs([(events[0].id, None, "unpriced")])
    (total,) = ledger.costs(since=None, until=None)
    assert (total.cost_nano, total.unpriced_calls) == (9_000_000, 1)
    with pytest.raises(ValidationError):
        ledger.update_costs([(events[0].id, None, "priced")])


def test_sessions_table(ledger: Ledger) -> None:
    ledger.record_many(
        [
            ev(0, session="old", agent="a"),
            ev(5, session="old", agent="b"),
            ev(30, session="new", agent="a", cost_usd=None, price_status="unpriced"),
            ev(40, session=None),
        ]
    )
    rows = ledger.sessions()
    assert [r.session for r in rows] == ["new", "old"]
    old = rows[1]
    assert old.agents == ["a", "b"] and old.calls == 2 and old.tokens == 220
    assert old.start == T0 and old.end == T0 + timedelta(minutes=5)
    assert rows[0].unpriced_calls == 1
    assert [r.session for r in ledger.sessions(limit=1)] == ["new"]
    assert [r.session for r in ledger.sessions(since=T0 + timedelta(minutes=10))] == ["new"]
    assert json.dumps(old.to_dict())


def test_quota_readings(ledger: Ledger) -> None:
    for i, util in enumerate((0.1, 0.5, 0.9)):
        ledger.record_reading(
            {
                "timestamp": (T0 + timedelta(hours=i)).isoformat(),
                "backend": "claude",
                "source": "probe",
                "utilization": util,
            }
        )
    ledger.record_reading({"timestamp": T0.isoformat(), "backend": "gpt", "source": "piggyback"})
    assert [r["utilization"] for r in ledger.readings(backend="claude")] == [0.1, 0.5, 0.9]
    assert [r["utilization"] for r in ledger.readings(backend="claude", limit=2)] == [0.5, 0.9]
    assert len(ledger.readings(since=T0 + timedelta(minutes=30))) == 2
    latest = ledger.latest_readings()
    assert latest["claude"]["utilization"] == 0.9 and latest["gpt"]["source"] == "piggyback"
    assert ledger.prune_readings(T0 + timedelta(minutes=30), dry_run=True) == 2
    assert len(ledger.readings()) == 4
    assert ledger.prune_readings(T0 + timedelta(minutes=30)) == 2
    assert len(ledger.readings()) == 2
    with pytest.raises(ValidationError, match="backend"):
        ledger.record_reading({"timestamp": T0.isoformat(), "source": "probe"})


def test_state(ledger: Ledger) -> None:
    assert ledger.get_state("pauses", "agent-1") is None
    ledger.set_state("pauses", "agent-1", {"until": "2026-03-11", "by": "ops"})
    ledger.set_state("pauses", "agent-2", {"until": None})
    ledger.set_state("pauses", "agent-1", {"until": "2026-03-12"})
    assert ledger.get_state("pauses", "agent-1") == {"until": "2026-03-12"}
    assert set(ledger.list_state("pauses")) == {"agent-1", "agent-2"}
    ledger.set_state("pauses", "agent-2", None)
    assert list(ledger.list_state("pauses")) == ["agent-1"]
    assert ledger.list_state("alerts") == {}


def test_audit_log_has_every_accepted_event(ledger_url: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit" / "events.jsonl"
    with open_ledger(ledger_url, audit_log=str(audit)) as led:
        events = [ev(i) for i in range(12)]
        led.record_many(events[:6])  # imports: logged once stored, only the new ones
        led.record_many(events[:6])
        for e in events[3:]:  # record(): logged when accepted, before the database has it
            led.record(e)
        led.flush()
        assert led.count() == 12
    ids = [e.id for e in read_events(audit)]
    assert sorted(set(ids)) == sorted(e.id for e in events)
    assert len(ids) == 6 + 9  # a re-recorded event has a second line; replay stores it once


def test_default_audit_location(ledger_url: str, tmp_path: Path) -> None:
    with open_ledger(ledger_url) as led:
        led.record_many([ev(0)])
        path = led.audit_path  # type: ignore[attr-defined]
    if ledger_url.startswith("sqlite"):
        assert path == tmp_path / "audit.jsonl"
    else:
        assert path == tmp_path / "data" / "audit.jsonl"  # LLMBUDGET_HOME in the tests
    assert path.exists()


def test_migrations_are_recorded_once(ledger_url: str) -> None:
    from llmbudget.store.migrations import MIGRATIONS

    with open_ledger(ledger_url) as led:
        first = led.migrations_applied_now  # type: ignore[attr-defined]
        assert [n for n, _, fresh in first if fresh] == [m.name for m in MIGRATIONS[led.dialect]]  # type: ignore[attr-defined]
    with open_ledger(ledger_url) as led:
        assert not any(fresh for _, _, fresh in led.migrations_applied_now)  # type: ignore[attr-defined]
        assert [n for n, _ in led.applied_migrations()] == sorted(m.name for m in MIGRATIONS[led.dialect])  # type: ignore[attr-defined]


def test_processes_opening_a_fresh_database_at_once_all_migrate(ledger_url: str) -> None:
    """Several proxies started together on an empty database must not collide creating the schema."""
    import subprocess
    import sys

    code = "import sys; from llmbudget.store import open_ledger; open_ledger(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, ledger_url], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    with open_ledger(ledger_url) as led:
        assert not any(fresh for _, _, fresh in led.migrations_applied_now)  # type: ignore[attr-defined]


def test_user_and_task_type_spellings(ledger: Ledger) -> None:
    ledger.record_many(
        [
            ev(0, user="ann", task_type="code"),
            ev(1, user="bob", task_type="chat"),
            ev(2, user="ann", task_type="chat", cost_usd=Decimal("0.002")),
        ]
    )
    assert {r.key: r.calls for r in ledger.costs(since=None, until=None, by="user")} == {"ann": 2, "bob": 1}
    rows = ledger.costs(since=None, until=None, by="task-type", filters={"user": "ann"})
    assert [(r.key, r.cost_nano) for r in rows] == [("chat", 2_000_000), ("code", 1_000_000)]
    assert [e.user for e in ledger.query(filters={"task-type": "chat", "user": "bob"})] == ["bob"]


def test_dimension_filters_read_through_the_rollups_match_a_plain_filter(ledger: Ledger) -> None:
    # attribution filters are narrowed to matching hours through the rollups (no per-field index):
    # every answer must equal filtering all events in Python, at ragged since/until and across days
    rng = random.Random(11)
    start = datetime(2026, 3, 28, 22, 13, tzinfo=UTC)
    events = []
    for i in range(600):
        events.append(
            ev(
                timestamp=start + timedelta(minutes=rng.uniform(0, 3 * 24 * 60)),
                agent=rng.choice(["a1", "a2", None]),
                user=rng.choice(["ann", "bob"]),
                team=rng.choice(["core", "ml"]),
                task_type=rng.choice(["code", "chat"]),
                tier=rng.choice(["fast", "deep"]),
                model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
                session=f"s{i % 7}",
            )
        )
    rare = ev(timestamp=start + timedelta(hours=30, minutes=7), user="rare-user", agent="a9", team="solo")
    events.append(rare)
    assert ledger.record_many(events) == len(events)

    def want(since: datetime | None, until: datetime | None, f: dict[str, str]) -> list[str]:
        keep = [
            e
            for e in events
            if (since is None or e.timestamp >= since)
            and (until is None or e.timestamp < until)
            and all(getattr(e, k.replace("-", "_")) == v for k, v in f.items())
        ]
        keep.sort(key=lambda e: (e.timestamp, e.id), reverse=True)
        return [e.id for e in keep]

    windows = [
        (None, None),
        (start + timedelta(hours=5, minutes=41), start + timedelta(hours=53, minutes=2)),
        (start + timedelta(minutes=47), None),
        (None, start + timedelta(days=1, minutes=5)),
    ]
    filters: list[dict[str, str]] = [
        {"user": "ann"},
        {"agent": "a1", "tier": "deep"},
        {"task-type": "chat"},
        {"user": "rare-user"},
        {"user": "nobody"},
        {"model": "gpt-4o-mini", "team": "ml"},
        {"user": "bob", "session": "s3"},
    ]
    for since, until in windows:
        for f in filters:
            expected = want(since, until, f)
            assert [
                e.id for e in ledger.query(since=since, until=until, filters=f, limit=None)
            ] == expected, f
            assert [e.id for e in ledger.query(since=since, until=until, filters=f, limit=13)] == expected[
                :13
            ], f
            oldest = ledger.query(since=since, until=until, filters=f, limit=5, newest_first=False)
            assert [e.id for e in oldest] == expected[::-1][:5], f
            assert ledger.count(since=since, until=until, filters=f) == len(expected), f
            assert [
                e.id for e in ledger.iter_events(since=since, until=until, filters=f, batch=17)
            ] == expected[::-1]
    assert [e.id for e in ledger.query(filters={"user": "rare-user"})] == [rare.id]


def test_events_carry_only_the_indexes_the_filters_need(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "idx.db"
    with open_ledger(f"sqlite:///{path}"):
        pass
    conn = sqlite3.connect(path)
    names = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL"
        )
    }
    plan = " ".join(
        str(r[3])
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM events WHERE source <> 'proxy' AND ts_us >= ? "
            "ORDER BY ts_us DESC, id DESC LIMIT ?",
            (0, 10),
        )
    )
    conn.close()
    # events_key_ts is partial: only calls made with a virtual key pay for it (`scope: key` seeds);
    # events_not_proxy_ts too: only imported and wrap() calls, which a live server looks for
    assert names == {
        "events_ts",
        "events_session_ts",
        "events_task_id_ts",
        "events_unpriced",
        "events_key_ts",
        "events_not_proxy_ts",
    }
    assert "events_not_proxy_ts" in plan


def test_the_sqlite_writer_holds_a_small_page_cache_however_much_it_writes(tmp_path: Path) -> None:
    # the server's memory must not grow with every page the writer ever touched (a 64 MiB cache
    # did, by about 350 bytes per event): the writing connection keeps a few MiB, the readers more
    led = open_ledger(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        assert isinstance(led, SQLiteLedger)
        led.record_many([ev(i / 60) for i in range(3000)])
        (writer,) = led._wconn.execute("PRAGMA cache_size").fetchone()
        assert writer == -WRITER_CACHE_KIB and WRITER_CACHE_KIB <= 8192
        with led._read() as db:
            ((reader,),) = db.execute("PRAGMA cache_size")
        assert reader == -READER_CACHE_KIB
        assert led.count() == 3000
    finally:
        led.close()


def test_unset_fields_are_stored_as_sql_null(tmp_path: Path) -> None:
    # the NoneType adapter registered by the SQLite ledger (a faster bind) must still bind NULL
    import sqlite3

    path = tmp_path / "nulls.db"
    with open_ledger(f"sqlite:///{path}") as led:
        led.record(ev(agent="a1"))
        led.flush()
    conn = sqlite3.connect(path)
    row = conn.execute(
        "SELECT typeof(session), typeof(team), typeof(reason), typeof(agent), session IS NULL FROM events"
    ).fetchone()
    assert conn.execute("SELECT count(*) FROM events WHERE ? IS NULL", (None,)).fetchone() == (1,)
    conn.close()
    assert row == ("null", "null", "null", "text", 1)
