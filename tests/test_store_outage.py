"""A database outage spools accepted events to disk and replays them later: nothing lost or doubled."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from llmbudget.errors import DatabaseUnreachable
from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger
from llmbudget.store.jsonl import read_events
from llmbudget.store.postgres import PostgresLedger
from llmbudget.store.sqlite import SQLiteLedger

PG_ADMIN_URL = os.environ.get("LLMBUDGET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _events(n: int, tag: str) -> list[UsageEvent]:
    return [UsageEvent(backend="b", model="m", agent=tag, session="s") for _ in range(n)]


def _wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return True
        except DatabaseUnreachable:
            pass
        time.sleep(0.1)
    return False


class _PgSwitch:
    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]

    def down(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,)
            )

    def up(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


def test_postgres_outage_spools_and_replays(pg_url: str, tmp_path: Path) -> None:
    switch = _PgSwitch(pg_url)
    led = PostgresLedger(pg_url, flush_interval_s=0.05, connect_timeout_s=1)
    before = _events(5, "before")
    led.record_many(before)
    switch.down()
    try:
        during = _events(40, "during")
        for e in during:
            led.record(e)
        led.flush()  # returns once the events are safe in the spool
        spooled = {e.id for e in read_events(led.spool_path)}
        assert {e.id for e in during} <= spooled
        with pytest.raises(DatabaseUnreachable) as info:
            led.count()
        assert "make services" in str(info.value)
    finally:
        switch.up()
    assert _wait_for(lambda: led.count() == 45), "the spool was not replayed"
    led.record_many(during[:10])  # replays and retries never double
    led.close()
    with open_ledger(pg_url) as again:
        assert again.count() == 45
        (total,) = again.costs(since=None, until=None)
        assert total.calls == 45
        [s] = again.sessions()
        assert s.calls == 45
    audit = [e.id for e in read_events(again.audit_path)]  # type: ignore[attr-defined]
    assert sorted(audit) == sorted(e.id for e in before + during)


def test_spool_left_by_a_closed_ledger_is_replayed_at_next_open(pg_url: str) -> None:
    switch = _PgSwitch(pg_url)
    led = PostgresLedger(pg_url, flush_interval_s=0.05, connect_timeout_s=1)
    switch.down()
    try:
        events = _events(25, "left")
        for e in events:
            led.record(e)
        led.close()  # the database is still down: the events stay in the spool file
        assert led.spool_path.stat().st_size > 0
    finally:
        switch.up()
    with open_ledger(pg_url) as again:
        assert again.count() == 25
    assert led.spool_path.stat().st_size == 0


def test_sqlite_locked_database_spools_and_replays(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    led = SQLiteLedger(url, flush_interval_s=0.05, busy_timeout_s=0.1)
    blocker = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock for a long time
    try:
        events = _events(30, "locked")
        for e in events:
            led.record(e)
        led.flush()
        assert {e.id for e in events} <= {e.id for e in read_events(led.spool_path)}
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _wait_for(lambda: led.count() == 30)
    led.close()
