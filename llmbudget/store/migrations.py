"""Ordered, named schema migrations, applied once each and recorded in the `migrations` table.

How to add a migration (other features append here; never edit or reorder one that exists,
because databases in the field have already applied it):

1. Append a call at the END of this file, with the next free number in its name::

       migration("0007_budget_reservations", '''
           CREATE TABLE budget_reservations (
               id TEXT PRIMARY KEY,
               amount_nano BIGINT NOT NULL
           );
           CREATE INDEX budget_reservations_amount ON budget_reservations (amount_nano);
       ''')

   One text is used for both back-ends when the SQL is portable (TEXT, BIGINT, INTEGER,
   DOUBLE PRECISION, partial indexes, `ON CONFLICT` all are). When it is not, give both::

       migration("0008_x", sqlite="...", postgres="...")

   or a function `fn(conn)` that receives a connection wrapper with `.execute(sql, params)`
   (placeholders `?`, rewritten for PostgreSQL) and `.dialect` ("sqlite" | "postgres").
2. Statements in one text are separated by `;` at the end of a line; no `;` inside strings.
3. Each migration runs in its own transaction together with its row in `migrations`;
   `Ledger.open` applies the missing ones automatically, `llmbudget db migrate` lists them.

Conventions of the core schema: times are integer epoch microseconds (`ts_us`, `first_us`, ...),
money is integer nano-USD (`cost_nano`, NULL when unpriced), the `user` attribution field is
the column `user_name` (`user` is reserved in PostgreSQL), JSON is stored as TEXT, and the
rollup dimension columns hold '' for "not set" so that they can be part of a unique key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DIALECTS = ("sqlite", "postgres")

MigrationBody = str | Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    body: MigrationBody


#: the migrations of each dialect, in the order they are applied
MIGRATIONS: dict[str, list[Migration]] = {d: [] for d in DIALECTS}


def migration(
    name: str,
    common: MigrationBody | None = None,
    *,
    sqlite: MigrationBody | None = None,
    postgres: MigrationBody | None = None,
) -> None:
    """Append a migration: `common` for both dialects, or `sqlite=` and `postgres=` separately."""
    bodies = {
        "sqlite": sqlite if sqlite is not None else common,
        "postgres": postgres if postgres is not None else common,
    }
    for dialect, body in bodies.items():
        if body is None:
            raise ValueError(f"migration {name!r} has no body for {dialect}")
        if any(m.name == name for m in MIGRATIONS[dialect]):
            raise ValueError(f"migration {name!r} is defined twice")
        MIGRATIONS[dialect].append(Migration(name, body))


def split_statements(sql: str) -> list[str]:
    """Split a migration text on `;` at line ends into single statements."""
    out: list[str] = []
    buf: list[str] = []
    for line in sql.splitlines():
        buf.append(line)
        if line.rstrip().endswith(";"):
            stmt = "\n".join(buf).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            buf = []
    rest = "\n".join(buf).strip().rstrip(";").strip()
    if rest:
        out.append(rest)
    return out


# Rollup dimensions, in key order. Changing this list needs a new migration.
ROLLUP_DIMS = (
    "backend",
    "provider",
    "model",
    "agent",
    "user_name",
    "team",
    "task_type",
    "tier",
    "price_status",
    "status",
)

_SUMS = """
    calls BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    cost_nano BIGINT NOT NULL DEFAULT 0,
    unpriced_calls BIGINT NOT NULL DEFAULT 0"""

_DIM_COLS = ",\n".join(f"    {d} TEXT NOT NULL DEFAULT ''" for d in ROLLUP_DIMS)
_DIM_KEY = ", ".join(ROLLUP_DIMS)

migration(
    "0001_events",
    """
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    ts_us BIGINT NOT NULL,
    backend TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    request_model TEXT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    cost_nano BIGINT,
    price_status TEXT NOT NULL,
    agent TEXT,
    session TEXT,
    user_name TEXT,
    team TEXT,
    task_id TEXT,
    task_type TEXT,
    tier TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    http_status INTEGER,
    streamed INTEGER NOT NULL DEFAULT 0,
    duration_ms DOUBLE PRECISION,
    ttft_ms DOUBLE PRECISION,
    source TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts_us);
CREATE INDEX events_agent_ts ON events (agent, ts_us) WHERE agent IS NOT NULL;
CREATE INDEX events_session_ts ON events (session, ts_us) WHERE session IS NOT NULL;
CREATE INDEX events_user_ts ON events (user_name, ts_us) WHERE user_name IS NOT NULL;
CREATE INDEX events_team_ts ON events (team, ts_us) WHERE team IS NOT NULL;
CREATE INDEX events_task_id_ts ON events (task_id, ts_us) WHERE task_id IS NOT NULL;
CREATE INDEX events_task_type_ts ON events (task_type, ts_us) WHERE task_type IS NOT NULL;
CREATE INDEX events_tier_ts ON events (tier, ts_us) WHERE tier IS NOT NULL;
CREATE INDEX events_unpriced ON events (provider, model) WHERE cost_nano IS NULL;
""",
)

_ROLLUPS = f"""
CREATE TABLE rollup_hourly (
    hour BIGINT NOT NULL,
{_DIM_COLS},
{_SUMS},
    PRIMARY KEY (hour, {_DIM_KEY})
){{without_rowid}};
CREATE TABLE rollup_daily (
    day BIGINT NOT NULL,
{_DIM_COLS},
{_SUMS},
    PRIMARY KEY (day, {_DIM_KEY})
){{without_rowid}};
"""
# SQLite: WITHOUT ROWID clusters the rollups on (bucket, dims): one B-tree per upsert, range scans in order
migration(
    "0002_rollups",
    sqlite=_ROLLUPS.format(without_rowid=" WITHOUT ROWID"),
    postgres=_ROLLUPS.format(without_rowid=""),
)

migration(
    "0003_sessions",
    """
CREATE TABLE sessions (
    session TEXT PRIMARY KEY,
    first_us BIGINT NOT NULL,
    last_us BIGINT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost_nano BIGINT NOT NULL DEFAULT 0,
    unpriced_calls BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_last ON sessions (last_us);
CREATE TABLE session_agents (
    session TEXT NOT NULL,
    agent TEXT NOT NULL,
    PRIMARY KEY (session, agent)
);
""",
)

migration(
    "0004_quota_readings",
    sqlite="""
CREATE TABLE quota_readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_us BIGINT NOT NULL,
    backend TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX quota_readings_ts ON quota_readings (ts_us);
CREATE INDEX quota_readings_backend_ts ON quota_readings (backend, ts_us);
""",
    postgres="""
CREATE TABLE quota_readings (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_us BIGINT NOT NULL,
    backend TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX quota_readings_ts ON quota_readings (ts_us);
CREATE INDEX quota_readings_backend_ts ON quota_readings (backend, ts_us);
""",
)

migration(
    "0005_state",
    """
CREATE TABLE state (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_us BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);
""",
)

# ---- append new migrations below this line (see the module docstring) ----

# budgets (llmbudget.budget.counters): counters per (budget, scope value, window), reservations in
# flight, and one-time claims (alert de-duplication). IF NOT EXISTS: the counter store also
# creates them when it opens a database the ledger has not migrated yet.
migration(
    "0006_budget_counters",
    """
CREATE TABLE IF NOT EXISTS budget_counters (
    counter TEXT PRIMARY KEY,
    spent BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0,
    updated_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS budget_reservations (
    id TEXT PRIMARY KEY,
    items TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_reservations_expiry ON budget_reservations (expires_at);
CREATE TABLE IF NOT EXISTS budget_claims (
    key TEXT PRIMARY KEY,
    claimed_at DOUBLE PRECISION NOT NULL
);
""",
)

# Ingest speed: every index on `events` is paid on each insert. Low-cardinality attribution
# fields do not need their own: a filter on them is narrowed through the rollups to the hours
# that hold matches (SQLLedger._hour_ranges), then read with the time index. Session and task id
# (not rollup dimensions, many distinct values) keep theirs.
migration(
    "0007_events_drop_dimension_indexes",
    """
DROP INDEX IF EXISTS events_agent_ts;
DROP INDEX IF EXISTS events_user_ts;
DROP INDEX IF EXISTS events_team_ts;
DROP INDEX IF EXISTS events_task_type_ts;
DROP INDEX IF EXISTS events_tier_ts;
""",
)

# dashboard: sessions a client ended (`POST /api/sessions/{id}/end`; idle sessions are ended by
# time, not stored), and the alert thresholds per session and per agent edited in the dashboard
# (read by every replica's threshold watch with a one-second cache).
migration(
    "0008_session_ends_and_alert_thresholds",
    """
CREATE TABLE session_ends (
    session TEXT PRIMARY KEY,
    ended_us BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE alert_thresholds (
    scope TEXT NOT NULL,
    agent TEXT NOT NULL,
    limit_nano BIGINT NOT NULL,
    auto_pause INTEGER NOT NULL DEFAULT 0,
    updated_us BIGINT NOT NULL,
    PRIMARY KEY (scope, agent)
);
""",
)

# Virtual keys (llmbudget.keys): only the SHA-256 of each `llmb-...` secret is stored, with the
# attribution it fixes. Events made with one carry the key's name in `key` (never the secret);
# budgets with `scope: key` seed from the raw events through their own index.
migration(
    "0009_virtual_keys",
    """
CREATE TABLE virtual_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    agent TEXT,
    team TEXT,
    user_name TEXT,
    backends TEXT,
    created_us BIGINT NOT NULL,
    expires_us BIGINT,
    revoked_us BIGINT
);
ALTER TABLE events ADD COLUMN key TEXT;
CREATE INDEX events_key_ts ON events (key, ts_us) WHERE key IS NOT NULL;
""",
)

# budget counters follow the ledger (llmbudget.budget.counters: reconcile): settlements the ledger does
# not hold yet, by event id. IF NOT EXISTS: the counter store creates it too.
migration(
    "0010_budget_pending",
    """
CREATE TABLE IF NOT EXISTS budget_pending (
    event_id TEXT NOT NULL,
    counter TEXT NOT NULL,
    amount BIGINT NOT NULL,
    kept BIGINT NOT NULL DEFAULT 0,
    settled_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (event_id, counter)
);
CREATE INDEX IF NOT EXISTS budget_pending_counter ON budget_pending (counter);
""",
)

# Prices by unit: the one-hour part of cache writes, the service tier that served the call and the
# other priced units a response reports (JSON object of counts), so `reprice` can redo them.
migration(
    "0011_events_priced_units",
    """
ALTER TABLE events ADD COLUMN cache_write_1h_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN service_tier TEXT;
ALTER TABLE events ADD COLUMN units TEXT NOT NULL DEFAULT '{}';
""",
)

# Why a recorded value differs from what was reported (an absurd upstream count replaced by the
# estimate, output beyond what the request allowed, ...): NULL when nothing needed saying.
migration("0012_events_reason", "ALTER TABLE events ADD COLUMN reason TEXT;")
