"""Generate realistic UsageEvents into a ledger, fast; cache big generated databases under bench/data/.

    python bench/gen_events.py --events 10000000 --db bench/data/ledger-10m.db

Attribution is correlated the way real traffic is (an agent belongs to one user and team and
uses a few models; a model belongs to one backend), so rollups have a realistic size: a few
hundred rows per hour, not one per event.

For millions of events the `--bulk` path (the default above 200,000 events on SQLite) writes
events with plain INSERTs and builds the rollups and sessions afterwards with the same
GROUP BYs the ledger's write path computes incrementally, then verifies them against the raw
events (`verify_rollups`). Smaller runs go through `Ledger.record_many`.

`--copies K` (bulk only) generates N/K events in Python and has SQLite copy them K-1 times, each
copy shifted by a fraction of the spacing between events (fresh ids, sessions and task ids), so
10,000,000 events take minutes instead of the better part of an hour; the traffic has the same
shape, K times as dense.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmbudget.events import UsageEvent  # noqa: E402
from llmbudget.money import from_nano  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"

#: model -> (backend, provider, input nano/token, output nano/token); None = unpriced
MODELS: dict[str, tuple[str, str, int, int] | None] = {
    "gpt-4o": ("openai", "openai", 2500, 10000),
    "gpt-4o-mini": ("openai", "openai", 150, 600),
    "o3-mini": ("openai", "openai", 1100, 4400),
    "claude-sonnet-4-5": ("anthropic", "anthropic", 3000, 15000),
    "claude-haiku-4-5": ("anthropic", "anthropic", 1000, 5000),
    "claude-opus-4-1": ("anthropic", "anthropic", 15000, 75000),
    "gemini-2.5-pro": ("gemini", "google", 1250, 10000),
    "gemini-2.5-flash": ("gemini", "google", 300, 2500),
    "llama3.1:8b": ("local", "local", 0, 0),
    "qwen2.5-coder:7b": ("local", "local", 0, 0),
    "mystery-model-x": None,
}
_BACKEND_OF = {"mystery-model-x": ("openrouter", "openrouter")}
TASK_TYPES = ("code", "review", "chat", "summarize", "plan")
TIERS = ("fast", "standard", "deep")


def _agents(rng: random.Random, n: int = 24) -> list[dict[str, object]]:
    models = list(MODELS)
    out = []
    for i in range(n):
        out.append(
            {
                "agent": f"agent-{i:02d}",
                "user": f"user-{i % 9}",
                "team": f"team-{i % 3}",
                "tier": TIERS[i % 3],
                "models": rng.sample(models, 3),
                "task_types": rng.sample(TASK_TYPES, 2),
            }
        )
    return out


def make_events(n: int, *, start: datetime, span: timedelta, seed: int = 7) -> Iterator[UsageEvent]:
    """`n` events spread evenly (with jitter) over [start, start + span), time-ordered."""
    rng = random.Random(seed)
    agents = _agents(rng)
    step_us = span / timedelta(microseconds=1) / max(n, 1)
    base = start
    for i in range(n):
        a = agents[rng.randrange(len(agents))]
        model = a["models"][rng.randrange(3)]  # type: ignore[index]
        spec = MODELS[model]
        backend, provider = (spec[0], spec[1]) if spec else _BACKEND_OF[model]
        inp = rng.randrange(200, 20000)
        cached = rng.randrange(0, inp // 2) if rng.random() < 0.3 else 0
        out = rng.randrange(20, 2000)
        reasoning = rng.randrange(0, out) if rng.random() < 0.1 else 0
        status = "ok" if rng.random() < 0.96 else ("error" if rng.random() < 0.8 else "interrupted")
        if spec is None:
            cost, pstatus = None, "unpriced"
        elif provider == "local":
            cost, pstatus = Decimal(0), "local"
        else:
            cost, pstatus = from_nano(inp * spec[2] + out * spec[3]), "priced"
        yield UsageEvent(
            backend=backend,
            model=model,
            provider=provider,
            timestamp=base + timedelta(microseconds=int(i * step_us + rng.random() * step_us * 0.5)),
            input_tokens=inp,
            cached_input_tokens=cached,
            output_tokens=out,
            reasoning_tokens=reasoning,
            cost_usd=cost,
            price_status=pstatus,
            agent=str(a["agent"]),
            user=str(a["user"]),
            team=str(a["team"]),
            tier=str(a["tier"]),
            task_type=a["task_types"][rng.randrange(2)],  # type: ignore[index]
            session=f"{a['agent']}-s{i // 5000}",
            task_id=f"t{i // 50}",
            status=status,
            http_status=200 if status == "ok" else 500,
            streamed=rng.random() < 0.5,
            duration_ms=round(rng.uniform(100, 30000), 1),
            source="proxy",
        )


def generate(
    db: str,
    n: int,
    *,
    start: datetime | None = None,
    span: timedelta = timedelta(days=30),
    bulk: bool | None = None,
    seed: int = 7,
    copies: int = 1,
) -> dict[str, float]:
    """Fill the ledger at `db` with `n` events; returns figures (seconds, events/s)."""
    from llmbudget.store import open_ledger

    start = start or datetime(2026, 3, 1, tzinfo=UTC)
    is_sqlite = not db.startswith(("postgresql://", "postgres://"))
    if bulk is None:
        bulk = is_sqlite and n > 200_000
    t0 = time.perf_counter()
    if bulk:
        if not is_sqlite:
            raise SystemExit("--bulk works on SQLite only")
        _bulk_sqlite(db, n, start, span, seed, copies)
    else:
        if copies != 1:
            raise SystemExit("--copies works with --bulk only")
        with open_ledger(db, audit=False, batch_size=2000) as ledger:
            ledger.record_many(make_events(n, start=start, span=span, seed=seed))
    dt = time.perf_counter() - t0
    return {"events": n, "seconds": round(dt, 2), "events_per_s": round(n / dt)}


def _bulk_sqlite(db: str, n: int, start: datetime, span: timedelta, seed: int, copies: int = 1) -> None:
    from llmbudget.store import open_ledger
    from llmbudget.store.migrations import ROLLUP_DIMS
    from llmbudget.store.rows import EVENT_COLUMNS, event_to_row
    from llmbudget.store.sqlite import sqlite_path

    open_ledger(db, audit=False).close()  # schema via the real migrations
    path = sqlite_path(db)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='events' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:  # build indexes once at the end: much faster than per row
        conn.execute(f"DROP INDEX {name}")
    insert = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    batch: list[tuple[object, ...]] = []
    conn.execute("BEGIN")
    done = 0
    base = n // copies
    if base * copies != n:
        raise SystemExit(f"--events {n} is not a multiple of --copies {copies}")
    for ev in make_events(base, start=start, span=span, seed=seed):
        batch.append(event_to_row(ev))
        if len(batch) >= 50_000:
            conn.executemany(insert, batch)
            done += len(batch)
            batch = []
            print(f"\r  {done:,} events", end="", file=sys.stderr, flush=True)
    conn.executemany(insert, batch)
    step_us = span / timedelta(microseconds=1) / max(base, 1)
    renamed = {"id": "id || '.' || ?1", "ts_us": "ts_us + ?2", "session": "session || '.' || ?1"}
    renamed["task_id"] = "task_id || '.' || ?1"
    copy = (
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT "
        + ", ".join(renamed.get(c, c) for c in EVENT_COLUMNS)
        + " FROM events WHERE rowid <= ?3"
    )
    for k in range(1, copies):  # in SQL: no Python object per event
        conn.execute(copy, (str(k), int(step_us * k / copies), base))
        print(f"\r  {base * (k + 1):,} events", end="", file=sys.stderr, flush=True)
    conn.execute("COMMIT")
    print(file=sys.stderr)
    for _, sql in indexes:
        conn.execute(sql)
    dims = ", ".join(ROLLUP_DIMS)
    dims_sel = ", ".join(f"COALESCE({d}, '')" for d in ROLLUP_DIMS)
    sums = (
        "COUNT(*), SUM(input_tokens), SUM(cached_input_tokens), SUM(cache_write_tokens), SUM(output_tokens), "
        "SUM(reasoning_tokens), COALESCE(SUM(cost_nano), 0), SUM(cost_nano IS NULL)"
    )
    cols = "calls, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_nano, unpriced_calls"
    conn.execute("BEGIN")
    for table, bucket, unit in (
        ("rollup_hourly", "hour", 3_600_000_000),
        ("rollup_daily", "day", 86_400_000_000),
    ):
        conn.execute(f"DELETE FROM {table}")
        conn.execute(
            f"INSERT INTO {table} ({bucket}, {dims}, {cols}) SELECT ts_us / {unit}, {dims_sel}, {sums} "
            f"FROM events GROUP BY ts_us / {unit}, {dims_sel}"
        )
    conn.execute("DELETE FROM sessions")
    conn.execute(
        "INSERT INTO sessions (session, first_us, last_us, calls, input_tokens, output_tokens, cost_nano, "
        "unpriced_calls) SELECT session, MIN(ts_us), MAX(ts_us), COUNT(*), SUM(input_tokens), "
        "SUM(output_tokens), COALESCE(SUM(cost_nano), 0), SUM(cost_nano IS NULL) FROM events "
        "WHERE session IS NOT NULL AND session != '' GROUP BY session"
    )
    conn.execute("DELETE FROM session_agents")
    conn.execute(
        "INSERT INTO session_agents (session, agent) SELECT DISTINCT session, agent FROM events "
        "WHERE session IS NOT NULL AND session != '' AND agent IS NOT NULL AND agent != ''"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def verify_rollups(db: str) -> None:
    """Check that the daily rollup totals equal the raw events' totals (raises AssertionError)."""
    from llmbudget.store.sqlite import sqlite_path

    conn = sqlite3.connect(sqlite_path(db))
    raw = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(cost_nano), 0), SUM(input_tokens) FROM events"
    ).fetchone()
    for table in ("rollup_hourly", "rollup_daily"):
        r = conn.execute(f"SELECT SUM(calls), SUM(cost_nano), SUM(input_tokens) FROM {table}").fetchone()
        assert tuple(r) == tuple(raw), f"{table} {r} != events {raw}"
    conn.close()


def cached_db(n: int) -> str:
    """The SQLite URL of a cached generated ledger with `n` events (generating it when missing)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"ledger-{n}.db"
    marker = path.with_suffix(".ok")
    if not marker.exists():
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)
        print(f"generating {n:,} events into {path} (cached for next time)", file=sys.stderr)
        generate(f"sqlite:///{path}", n)
        verify_rollups(f"sqlite:///{path}")
        marker.write_text("ok\n")
    return f"sqlite:///{path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--db", required=True, help="sqlite:///path or postgresql://...")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--bulk", action="store_true", default=None)
    ap.add_argument("--copies", type=int, default=1, help="generate N/K events, copy them K-1 times in SQL")
    args = ap.parse_args()
    fig = generate(args.db, args.events, span=timedelta(days=args.days), bulk=args.bulk, copies=args.copies)
    print(fig)


if __name__ == "__main__":
    main()
