"""Ledger ingest: events/s into SQLite and PostgreSQL, through `record_many` and through `record()`.

Target (README, Benchmarks): >= 50,000 events/s into SQLite. Events are generated before the
clock starts (realistic attribution, see gen_events.py); the figure includes rollups, sessions and
(unless noted) the fsynced audit log, i.e. what the ledger does in production.

    python bench/bench_ledger.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gen_events import make_events

from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger

PG_ADMIN = os.environ.get("LLMBUDGET_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _events(n: int, seed: int) -> list[UsageEvent]:
    return list(
        make_events(
            n,
            start=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=seed),
            span=timedelta(days=1),
            seed=seed,
        )
    )


def _ingest(url: str, n: int, *, audit: bool, home: str) -> dict[str, float]:
    os.environ["LLMBUDGET_HOME"] = home  # the PostgreSQL audit log and spool go here
    out: dict[str, float] = {}
    batch = _events(n, 1)
    with open_ledger(url, audit=audit, audit_log=os.path.join(home, "audit.jsonl")) as led:
        t0, c0 = time.perf_counter(), time.process_time()
        led.record_many(batch)
        out["record_many_events_per_s"] = round(n / (time.perf_counter() - t0))
        # CPU per event does not depend on what else the machine runs; events/s does
        out["record_many_cpu_us_per_event"] = round((time.process_time() - c0) / n * 1e6, 2)
        queued = _events(n, 2)
        t0 = time.perf_counter()
        for e in queued:
            led.record(e)
        t_accept = time.perf_counter() - t0
        led.flush()
        out["record_events_per_s"] = round(n / (time.perf_counter() - t0))
        out["record_accept_us"] = round(t_accept / n * 1e6, 2)
        assert led.count() == 2 * n
    return out


def _writer_thread_cpu() -> float:
    """CPU seconds of the ledger's background writer thread (read from outside the thread)."""
    for t in threading.enumerate():
        if t.name == "llmbudget-ledger-writer" and t.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return 0.0


def _writer_cpu(url: str, rate: int, seconds: float, home: str) -> dict[str, float]:
    """`record()` paced at `rate` events/s, as a proxy would: the writer thread's CPU per event.

    This is the cost the serving process pays beside the proxy (same process, shared cores), with
    the default batch size and flush interval: batches are whatever arrives within 0.2 s.
    """
    os.environ["LLMBUDGET_HOME"] = home
    n = int(rate * seconds)
    events = _events(n, 3)
    with open_ledger(url, audit=True, audit_log=os.path.join(home, "audit-trickle.jsonl")) as led:
        led.record(events[0])
        led.flush()  # the writer thread exists from here on
        cpu0 = _writer_thread_cpu()
        t0 = time.perf_counter()
        for i, e in enumerate(events[1:], start=1):
            led.record(e)
            ahead = i / rate - (time.perf_counter() - t0)
            if ahead > 0.001:
                time.sleep(ahead)
        led.flush()
        cpu = _writer_thread_cpu() - cpu0
    return {"writer_cpu_us_per_event": round(cpu / (n - 1) * 1e6, 1)}


def _pg_database() -> tuple[str, Any]:
    import psycopg

    name = f"llmb_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", drop


def main(quick: bool = False) -> dict[str, Any]:
    """Run the ingest benchmark; returns the figures."""
    n = 20_000 if quick else 200_000
    figures: dict[str, Any] = {"events": n}
    with tempfile.TemporaryDirectory() as tmp:
        for audit in (True, False):
            db = Path(tmp) / f"bench-{audit}.db"
            r = _ingest(f"sqlite:///{db}", n, audit=audit, home=tmp)
            suffix = "" if audit else "_no_audit"
            figures.update({f"sqlite_{k}{suffix}": v for k, v in r.items()})
        # the serving process's cost: writer-thread CPU per event at a proxy's pace (audit on)
        for rate in (200, 2000) if quick else (200, 2000, 10000):
            r = _writer_cpu(f"sqlite:///{Path(tmp) / f'trickle-{rate}.db'}", rate, 1.0 if quick else 3.0, tmp)
            figures[f"sqlite_record_at_{rate}_per_s_writer_cpu_us_per_event"] = r["writer_cpu_us_per_event"]
        url, drop = _pg_database()
        try:
            r = _ingest(url, n, audit=True, home=tmp)
            figures.update({f"postgres_{k}": v for k, v in r.items()})
        finally:
            drop()
    figures["target_sqlite_events_per_s"] = 50_000
    figures["sqlite_meets_target"] = figures["sqlite_record_many_events_per_s"] >= 50_000
    for k, v in figures.items():
        print(
            f"  {k:40s} {v:>12,}"
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"  {k:40s} {v}"
        )
    return figures


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
