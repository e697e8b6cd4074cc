"""bench/gen_events.py's bulk path builds exactly the rollups and sessions the ledger builds on write."""

from __future__ import annotations

import sqlite3
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from gen_events import generate, verify_rollups

TABLES = {"rollup_hourly": "hour", "rollup_daily": "day", "sessions": "session", "session_agents": "session"}


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
        out["events"] = sorted(
            r[1:] for r in conn.execute("SELECT * FROM events").fetchall()
        )  # ids are random
        return out
    finally:
        conn.close()


def test_bulk_generation_equals_the_write_path(tmp_path: Path) -> None:
    live, bulk = tmp_path / "live.db", tmp_path / "bulk.db"
    generate(f"sqlite:///{live}", 3000, span=timedelta(days=3), bulk=False)
    generate(f"sqlite:///{bulk}", 3000, span=timedelta(days=3), bulk=True)
    verify_rollups(f"sqlite:///{bulk}")
    a, b = _dump(live), _dump(bulk)
    assert len(a["events"]) == 3000 and len(a["rollup_hourly"]) > 100
    for table in a:
        assert a[table] == b[table], table
