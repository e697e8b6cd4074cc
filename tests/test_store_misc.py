"""Audit-log reading, opening by URL or path, default location, WAL, and unreachable servers."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.config import data_dir
from llmbudget.errors import DatabaseMissing, DatabaseUnreachable, StorageError
from llmbudget.events import UsageEvent
from llmbudget.store import Ledger, open_ledger
from llmbudget.store.jsonl import AuditLog, CorruptLineWarning, event_line, read_events
from llmbudget.store.sqlite import SQLiteLedger, sqlite_path


def test_corrupted_audit_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    good = [UsageEvent(backend="b", model="m") for _ in range(3)]
    with AuditLog(path) as log:
        log.append(good[:2])
        with open(path, "ab") as f:
            f.write(b'{"backend": "b", "model": "m", "id": "x", "input_tokens": -1}\n')
            f.write(b"\x00\x01garbage{\n")
            f.write(b'{"truncated": \n')
        log.append(good[2:])
    with pytest.warns(CorruptLineWarning) as caught:
        ids = [e.id for e in read_events(path)]
    assert ids == [e.id for e in good]
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:3:" in m and "input_tokens" in m for m in messages)
    assert any(f"{path}:4:" in m for m in messages) and any(f"{path}:5:" in m for m in messages)


def test_default_location_is_created_and_in_wal_mode(tmp_path: Path) -> None:
    with Ledger.open() as led:
        assert isinstance(led, SQLiteLedger)
        assert led.path == data_dir() / "llmbudget.db"
        led.record_many([UsageEvent(backend="b", model="m")])
    assert (data_dir() / "audit.jsonl").exists()
    conn = sqlite3.connect(data_dir() / "llmbudget.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:////abs/x.db", "/abs/x.db"),
        ("/abs/y.db", "/abs/y.db"),
        ("sqlite:///rel.db", "{cwd}/rel.db"),
        ("~/z.db", "{home}/z.db"),
    ],
)
def test_sqlite_urls_and_paths(given: str, expected: str, tmp_path: Path) -> None:
    want = expected.format(cwd=Path.cwd(), home=Path.home())
    assert sqlite_path(given) == Path(want)


def test_plain_path_opens(tmp_path: Path) -> None:
    with open_ledger(str(tmp_path / "sub" / "dir" / "p.db")) as led:
        assert led.count() == 0
    with pytest.raises(StorageError):
        sqlite_path("sqlite://host/x.db")


def test_unreachable_postgres_names_masked_url_and_what_to_check() -> None:
    url = "postgresql://alice:s3cret@127.0.0.1:1/ledger"
    with pytest.raises(DatabaseUnreachable) as info:
        open_ledger(url, connect_timeout_s=1)
    msg = str(info.value)
    assert "s3cret" not in msg
    assert "postgresql://alice:***@127.0.0.1:1/ledger" in msg
    assert "server is running" in msg and "make services" in msg and "port" in msg


def test_missing_postgres_database_is_reported(pg_url: str) -> None:
    name = pg_url.rsplit("/", 1)[1] + "_nope"
    with pytest.raises(DatabaseMissing, match=f"has no database '{name}'") as info:
        open_ledger(pg_url + "_nope")
    assert isinstance(info.value, DatabaseUnreachable)  # callers that catch the wider error still do
    assert f"createdb -h 127.0.0.1 -p 5432 -U postgres {name}" in str(info.value)


#: any text an event may hold: no NUL byte, no lone surrogate (UsageEvent refuses both)
_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(_TEXT),
    tags=st.dictionaries(st.text(_TEXT, max_size=5), st.text(_TEXT, max_size=5), max_size=3),
    dur=st.one_of(st.none(), st.floats(0, 365 * 24 * 3600 * 1000.0), st.integers(0, 10**6)),
    cost=st.one_of(st.none(), st.decimals(min_value=0, max_value=10**6, places=9)),
    tz=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
def test_audit_line_is_exactly_to_dict(
    text: str, tags: dict[str, str], dur: float | None, cost: Decimal | None, tz: timezone
) -> None:
    e = UsageEvent(
        backend=text or "b",
        model=text,
        agent=text,
        tags=tags,
        duration_ms=dur,
        cost_usd=cost,
        timestamp=datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=tz),
        request_model=text,
        http_status=201,
        reason=text or None,
    )
    assert json.loads(event_line(e)) == json.loads(json.dumps(e.to_dict()))


def test_audit_log_follows_rotation_and_deletion(tmp_path: Path) -> None:
    # the file stays open between appends; a rotated or deleted file must not swallow later lines
    path = tmp_path / "audit.jsonl"
    evs = [UsageEvent(backend="b", model="m") for _ in range(3)]
    with AuditLog(path) as log:
        log.reopen_check_s = 0.0  # checked once a second in production; lines before that go to the old file
        log.append(evs[:1])
        path.rename(tmp_path / "audit.jsonl.1")
        log.append(evs[1:2])
        path.unlink()
        log.append(evs[2:])
    assert [e.id for e in read_events(tmp_path / "audit.jsonl.1")] == [evs[0].id]
    assert [e.id for e in read_events(path)] == [evs[2].id]


def test_a_file_that_is_not_a_database_is_named_with_what_to_check(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("not sqlite at all\n" * 100)
    with pytest.raises(StorageError, match=r"notes\.db.*not a database.*Check that the path is right"):
        open_ledger(f"sqlite:///{bad}")
