"""The ledger's record can be trusted: seen within flush_interval_s, nothing accepted lost to kill -9,
a bad event never stops the writer, the audit log replayed once and only into its own database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmbudget.errors import ValidationError
from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger
from llmbudget.store.jsonl import read_events

ROOT = Path(__file__).resolve().parent.parent


def _ev(i: int, **kw: Any) -> UsageEvent:
    return UsageEvent(backend="b", model="m", agent="a", input_tokens=10 + i, output_tokens=i, **kw)


def _wait(pred: Any, timeout: float) -> float | None:
    """Seconds until pred() held, or None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


# ---------------------------------------------------------------------------- seen at once


def test_every_event_is_visible_to_another_reader_within_flush_interval(ledger_url: str) -> None:
    """After the first batch the writer used to sleep until batch_size events or an hour had passed."""
    with (
        open_ledger(ledger_url, flush_interval_s=0.2) as led,
        open_ledger(ledger_url, replay_audit=False) as reader,
    ):
        for i in range(4):  # a trickle: one call, a pause, the next
            e = _ev(i)
            led.record(e)
            took = _wait(lambda e=e: reader.get(e.id) is not None, 3.0)
            assert took is not None, f"event {i} not written within 3 s"
            # 0.2 s plus the write; the slack is for a busy shared machine (before: never, or an hour)
            assert took < 1.5, f"event {i} took {took:.2f} s"
            time.sleep(0.35)


def test_the_writer_thread_sleeps_while_nothing_is_queued(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}", flush_interval_s=0.01) as led:
        led.record(_ev(0))
        led.flush()
        [t] = [t for t in threading.enumerate() if t.name == "llmbudget-ledger-writer"]
        assert t.ident is not None
        clock = time.pthread_getcpuclockid(t.ident)
        c0 = time.clock_gettime(clock)
        time.sleep(1.0)
        assert time.clock_gettime(clock) - c0 < 0.05  # no busy loop


def test_a_burst_is_written_in_few_batches(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}", batch_size=500, flush_interval_s=0.2) as led:
        for i in range(5000):
            led.record(_ev(i))
        led.flush()
        stats = led.writer_stats()  # type: ignore[attr-defined]
        assert stats["events"] == 5000
        assert stats["batches"] <= 20


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"input_tokens": 10**20}, "input_tokens"),
        ({"output_tokens": 10**16}, "output_tokens"),
        ({"agent": "planner\x00"}, "agent"),
        ({"model": "gpt\ud800"}, "model"),
        ({"session": "s" * 5000}, "session"),
        ({"tags": {"k": "v\x00"}}, "tags"),
        ({"cost_usd": Decimal(10**7), "price_status": "priced"}, "cost_usd"),
        ({"cost_usd": Decimal("NaN"), "price_status": "priced"}, "cost_usd"),
        ({"duration_ms": float("nan")}, "duration_ms"),
        ({"ttft_ms": 1e300}, "ttft_ms"),
        ({"http_status": 10**6}, "http_status"),
        ({"reason": "x\x00"}, "reason"),
    ],
)
def test_absurd_values_are_refused_naming_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        UsageEvent(backend="b", model=kw.pop("model", "m"), **kw)
    assert info.value.field == field
    assert len(str(info.value)) < 200  # a number of thousands of digits is cut short


def test_the_bounds_themselves_are_accepted() -> None:
    e = UsageEvent(
        backend="b",
        model="m",
        input_tokens=10**12,
        output_tokens=10**12,
        cost_usd=Decimal(10**6),
        price_status="priced",
        agent="ü" * 4096,
    )
    assert e.cost_nano == 10**15


# ---------------------------------------------------------------------------- quarantine


def _poisoned(i: int) -> UsageEvent:
    e = _ev(i)
    e.input_tokens = 10**20  # past validation, as a bug elsewhere could: SQLite and PostgreSQL refuse it
    return e


def test_a_bad_event_is_quarantined_and_the_rest_written(ledger_url: str) -> None:
    with open_ledger(ledger_url, flush_interval_s=0.05) as led:
        events = [_ev(i) for i in range(40)]
        bad = [_poisoned(100), _poisoned(101)]
        for e in events[:20] + bad[:1] + events[20:] + bad[1:]:
            led.record(e)
        led.flush()
        assert led.count() == 40
        assert not led._writer.spool.pending()  # type: ignore[attr-defined]
        q = led.quarantined()  # type: ignore[attr-defined]
        assert sorted(x["event"]["id"] for x in q) == sorted(e.id for e in bad)
        assert all("refused" in x["reason"] for x in q)
        later = _ev(200)  # the writer carries on with the database, not the spool
        led.record(later)
        led.flush()
        assert led.get(later.id) is not None
        # an import with a bad event: the rest stored, the bad one quarantined, no exception
        more = [_ev(300 + i) for i in range(10)]
        assert led.record_many([*more[:5], _poisoned(310), *more[5:]]) == 10
        assert len(led.quarantined()) == 3  # type: ignore[attr-defined]


def test_a_spool_holding_a_bad_event_replays_the_rest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with open_ledger(url) as led:
        spool = led._writer.spool  # type: ignore[attr-defined]
    good = [_ev(i) for i in range(5)]
    spool.append([good[0], _poisoned(9), *good[1:]])  # left by an outage before the bounds existed
    with open_ledger(url) as led:
        assert led.count() == 5
        assert not spool.pending()
        [q] = led.quarantined()  # type: ignore[attr-defined]
        assert "input_tokens" in q["reason"]


def test_quarantine_cli_lists_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmbudget.cli import main

    db = tmp_path / "l.db"
    with open_ledger(f"sqlite:///{db}") as led:
        led.record(_poisoned(1))
    assert main(["db", "quarantine", "--db", str(db), "--json"]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 1 and "refused" in out["events"][0]["reason"]
    main(["db", "quarantine", "--db", str(db), "--csv"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("quarantined_at,id,") and len(lines) == 2
    main(["db", "quarantine", "--db", str(db)])
    assert "1 quarantined" in capsys.readouterr().out


# ---------------------------------------------------------------------------- kill -9 and replay


def _run_writer_and_kill(url: str, n: int) -> list[str]:
    """Start tests/ledger_writer.py (big batches, a 30 s interval), read n accepted ids, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "ledger_writer.py"), url],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ids: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            ids.append(line.strip())
            if len(ids) >= n:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert len(ids) == n
    return ids


def test_kill_9_loses_no_accepted_event(ledger_url: str) -> None:
    ids = _run_writer_and_kill(ledger_url, 400)
    with open_ledger(ledger_url) as led:
        assert led.replayed_at_start >= 1  # type: ignore[attr-defined]
        missing = [i for i in ids if led.get(i) is None]
        assert missing == []
        stored = led.count()
        audit_ids = {e.id for e in read_events(led.audit_path)}  # type: ignore[attr-defined]
        assert stored == len(audit_ids)  # every line once: nothing doubled
        (total,) = led.costs(since=None, until=None)
        assert total.calls == stored
    from llmbudget.store.replay import CHECKPOINTS

    with open_ledger(ledger_url) as again:  # the checkpoint: nothing is replayed twice
        assert again.replayed_at_start == 0  # type: ignore[attr-defined]
        assert again.count() == stored
        cp = again.get_state(CHECKPOINTS, again.checkpoint_key())  # type: ignore[attr-defined]
        assert cp is not None and cp["offset"] == again.audit_path.stat().st_size  # type: ignore[attr-defined]


def test_a_shared_audit_file_replays_each_line_into_its_own_database(tmp_path: Path) -> None:
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"  # audit.jsonl beside both
    open_ledger(b).close()
    ids = _run_writer_and_kill(a, 50)
    with open_ledger(b) as led_b:
        assert led_b.count() == 0
    with open_ledger(a) as led_a:
        assert all(led_a.get(i) is not None for i in ids)


def test_a_new_database_does_not_take_an_old_audit_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ids = _run_writer_and_kill(url, 20)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'l.db'}{suffix}").unlink(missing_ok=True)
    with open_ledger(url) as led:  # the lines belonged to the deleted database
        assert led.count() == 0
    assert ids


def test_a_log_truncated_in_place_and_grown_past_the_checkpoint_is_replayed_whole(ledger_url: str) -> None:
    """logrotate's copytruncate keeps the inode: an offset into the old content must not skip new lines."""
    from llmbudget.store.jsonl import AuditLog

    with open_ledger(ledger_url) as led:
        led.record_many([_ev(i) for i in range(20)])
        audit, ledger_id = led.audit_path, led.ledger_id  # type: ignore[attr-defined]
    # clean close: the checkpoint is at the end of the file; now it is copied away and truncated
    ino = audit.stat().st_ino
    os.truncate(audit, 0)
    # a server went on writing (more than before) and was killed before storing any of it
    lost = [_ev(100 + i, session="after-truncate") for i in range(40)]
    with AuditLog(audit, ledger=ledger_id) as w:
        w.append(lost)
    assert audit.stat().st_ino == ino
    with open_ledger(ledger_url) as led:
        missing = [e.id for e in lost if led.get(e.id) is None]
        assert missing == []  # before: the lines below the old offset were never read
        assert led.count() == 60


# ---------------------------------------------------------------------------- durability: fsync


def test_fsync_durability_group_commits(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}", durability="fsync") as led:
        events = [_ev(i) for i in range(50)]
        futures = []
        for e in events:
            led.record(e)
            futures.append(led.durable_future())  # type: ignore[attr-defined]
        for f in futures:
            if f is not None:
                f.result(timeout=5)
        led.wait_durable()  # type: ignore[attr-defined]
        lines = [e.id for e in read_events(led.audit_path)]  # type: ignore[attr-defined]
        assert lines == [e.id for e in events]
    with pytest.raises(ValidationError, match="durability"):
        open_ledger(f"sqlite:///{tmp_path / 'x.db'}", durability="sometimes")
