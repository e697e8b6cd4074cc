"""Ledger ingest: events/s into SQLite and PostgreSQL, through `record_many` and through `record()`.

Target (DESIGN.md section 10): >= 50,000 events/s into SQLite. Events are generated before the
clock starts (realistic attribution, see gen_events.py); the figure includes rollups, sessions and
(unless noted) the fsynced audit log, i.e. what the ledger does in production.

    python bench/bench_ledger.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
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
    return list(make_events(n, start=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=seed), span=timedelta(days=1),
                            seed=seed))


def _ingest(url: str, n: int, *, audit: bool, home: str) -> dict[str, float]:
    os.environ["LLMBUDGET_HOME"] = home  # the PostgreSQL audit log and spool go here
    out: dict[str, float] = {}
    batch = _events(n, 1)
    with open_ledger(url, audit=audit, audit_log=os.path.join(home, "audit.jsonl")) as led:
        t0 = time.perf_counter()
        led.record_many(batch)
        out["record_many_events_per_s"] = round(n / (time.perf_counter() - t0))
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
        url, drop = _pg_database()
        try:
            r = _ingest(url, n, audit=True, home=tmp)
            figures.update({f"postgres_{k}": v for k, v in r.items()})
        finally:
            drop()
    figures["target_sqlite_events_per_s"] = 50_000
    figures["sqlite_meets_target"] = figures["sqlite_record_many_events_per_s"] >= 50_000
    for k, v in figures.items():
        print(f"  {k:40s} {v:>12,}" if isinstance(v, int | float) and not isinstance(v, bool) else f"  {k:40s} {v}")
    return figures


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
