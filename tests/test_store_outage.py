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


def test_during_an_outage_the_writer_spools_without_waiting_out_the_pool(pg_url: str) -> None:
    """Each retry used to wait the pool's whole timeout (5 s here) while new events piled up in memory."""
    switch = _PgSwitch(pg_url)
    led = PostgresLedger(pg_url, flush_interval_s=0.05, connect_timeout_s=5)
    switch.down()
    try:
        led.record(_events(1, "first")[0])
        led.flush()  # noticing the outage may take the pool's timeout once
        waits = []
        end = time.monotonic() + 9
        while time.monotonic() < end:  # retries are due at 0.5, 1, 2, 4 s: each one is a quick probe now
            e = _events(1, "during")[0]
            led.record(e)
            t0 = time.monotonic()
            led.flush()
            waits.append(time.monotonic() - t0)
            time.sleep(0.25)
        assert max(waits) < 3.0, f"a flush waited {max(waits):.1f} s"
        assert len(list(read_events(led.spool_path))) == 1 + len(waits)
    finally:
        switch.up()
    assert _wait_for(lambda: led.count() == 1 + len(waits)), "the spool was not replayed"
    led.close()


def test_the_audit_checkpoint_moves_while_the_ledger_runs(tmp_path: Path) -> None:
    from llmbudget.store.replay import CHECKPOINTS

    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}", flush_interval_s=0.05) as led:
        led._writer.periodic_s = 0.2  # type: ignore[attr-defined]  # 30 s by default
        led._writer._next_periodic = 0.0  # type: ignore[attr-defined]
        for e in _events(30, "cp"):
            led.record(e)
        size = led.audit_path.stat().st_size  # type: ignore[attr-defined]

        def moved() -> bool:
            led.record(_events(1, "tick")[0])  # the writer thread checks between batches
            cp = led.get_state(CHECKPOINTS, led.checkpoint_key())  # type: ignore[attr-defined]
            return cp is not None and cp["offset"] >= size

        assert _wait_for(moved, timeout=10)
