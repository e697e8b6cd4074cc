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

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from .connection import DB

DIALECTS = ("sqlite", "postgres")
#: PostgreSQL advisory lock held while migrating: processes opening one database at once take turns
PG_MIGRATION_LOCK = 4141001

log = logging.getLogger(__name__)

MigrationBody = str | Callable[[DB], None]


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


def lock_migrations(db: DB) -> None:
    """Keep two processes from migrating the same database at once (SQLite: `BEGIN IMMEDIATE` already does)."""
    if db.dialect == "postgres":
        db.execute(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")


def apply_migrations(
    transaction: Callable[[], AbstractContextManager[DB]],
    dialect: str,
    lock: Callable[[DB], None] = lock_migrations,
) -> list[tuple[str, str, bool]]:
    """Apply the missing migrations, each in its own `transaction()` (a connection wrapper with
    `.execute(sql, params)`, `?` placeholders, and `.dialect`); returns (name, applied_at, applied now)
    of every migration. The ledger runs it when it opens, and so do budget counters kept in its database.
    """
    with transaction() as db:
        # two processes opening a fresh database at once would both try to create the table
        lock(db)
        db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    out: list[tuple[str, str, bool]] = []
    for m in MIGRATIONS[dialect]:
        with transaction() as db:
            lock(db)
            row = db.execute("SELECT applied_at FROM migrations WHERE name = ?", (m.name,))
            if row:
                out.append((m.name, str(row[0][0]), False))
                continue
            if callable(m.body):
                m.body(db)
            else:
                for stmt in split_statements(m.body):
                    db.execute(stmt)
            now = datetime.now().astimezone().isoformat(timespec="seconds")
            db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (m.name, now))
            log.info("migration_applied name=%s db=%s", m.name, dialect)
            out.append((m.name, now, True))
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
# flight, and one-time claims (alert de-duplication). IF NOT EXISTS: earlier versions of the
# counter store created them itself.
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
# that hold matches (`_hour_ranges`, llmbudget/store/reads.py), then read with the time index. Session and task id
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
# not hold yet, by event id. IF NOT EXISTS: earlier versions of the counter store created it.
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

# Budget counters' owners (llmbudget.budget.counters: each process's heartbeat; the reservations of
# a dead owner are released) and, on PostgreSQL, the functions that reserve and settle in one round
# trip. Earlier versions of the counter store created both itself when it opened: IF NOT EXISTS, and
# a function is created only when missing. A function's name carries its version: a changed body is a
# new function in a new migration, so processes of two versions can share a database.
_BUDGET_OWNERS = """
CREATE TABLE IF NOT EXISTS budget_owners (
    owner TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started TEXT NOT NULL DEFAULT '',
    heartbeat DOUBLE PRECISION NOT NULL
);
"""
_BUDGET_FUNCTIONS = {
    "llmb_budget_reserve_v2": """
CREATE OR REPLACE FUNCTION llmb_budget_reserve_v2(p_rid text, p_keys text[], p_items text[], p_amounts bigint[],
    p_items_json text, p_charges jsonb, p_now double precision, p_ttl double precision) RETURNS bigint[]
LANGUAGE plpgsql AS $fn$
DECLARE
  c jsonb;
  i integer := 0;
  s bigint;
  r bigint;
BEGIN
  -- A reservation need not survive a server crash: if lost, the settlement simply adds the real
  -- spend. Not waiting for its WAL flush halves a call's disk waits; settlements stay durable.
  PERFORM set_config('synchronous_commit', 'off', true);
  -- every counter written must exist to be row-locked; sorted, so two calls never deadlock
  INSERT INTO budget_counters(counter) SELECT k FROM unnest(p_items) AS k ORDER BY 1 ON CONFLICT DO NOTHING;
  PERFORM 1 FROM budget_counters WHERE counter = ANY(p_keys) ORDER BY counter FOR UPDATE;
  FOR c IN SELECT value FROM jsonb_array_elements(p_charges) LOOP
    i := i + 1;
    IF (c->>'l')::bigint >= 0 THEN
      SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(reserved), 0) INTO s, r FROM budget_counters
        WHERE counter IN (SELECT jsonb_array_elements_text(c->'r'));
      IF s + r + (c->>'a')::bigint > (c->>'l')::bigint THEN
        RETURN ARRAY[i, s, r]::bigint[];
      END IF;
    END IF;
  END LOOP;
  UPDATE budget_counters AS b SET reserved = b.reserved + x.a, updated_at = p_now
    FROM unnest(p_items, p_amounts) AS x(k, a) WHERE b.counter = x.k;
  INSERT INTO budget_reservations(id, items, expires_at) VALUES (p_rid, p_items_json, p_now + p_ttl);
  RETURN ARRAY[0, 0, 0]::bigint[];
END
$fn$""",
    "llmb_budget_settle_v1": """
CREATE OR REPLACE FUNCTION llmb_budget_settle_v1(p_rid text, p_keys text[], p_amounts bigint[],
    p_now double precision) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
  v_items text;
BEGIN
  DELETE FROM budget_reservations WHERE id = p_rid RETURNING items INTO v_items;
  -- the reservation released and the real spend added in one upsert per counter, in key order
  INSERT INTO budget_counters AS b (counter, spent, reserved, updated_at)
    SELECT k, SUM(sp), SUM(rs), p_now FROM (
      SELECT x->>0 AS k, 0::bigint AS sp, -((x->>1)::bigint) AS rs
        FROM jsonb_array_elements(COALESCE(v_items, '[]')::jsonb) AS x
      UNION ALL
      SELECT u.k, u.a, 0 FROM unnest(p_keys, p_amounts) AS u(k, a)
    ) AS parts GROUP BY k ORDER BY k
  ON CONFLICT (counter) DO UPDATE SET spent = b.spent + excluded.spent,
    reserved = GREATEST(0, b.reserved + excluded.reserved), updated_at = excluded.updated_at;
  RETURN CASE WHEN v_items IS NULL THEN 0 ELSE 1 END;
END
$fn$""",
    # v1 plus the pending rows of the event (amount the ledger will show, amount kept beside it);
    # returns 1 when the ledger already holds the event (the caller reconciles those counters)
    "llmb_budget_settle_v2": """
CREATE OR REPLACE FUNCTION llmb_budget_settle_v2(p_rid text, p_keys text[], p_amounts bigint[],
    p_now double precision, p_event text, p_shown bigint[]) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
  found_event boolean := false;
BEGIN
  PERFORM llmb_budget_settle_v1(p_rid, p_keys, p_amounts, p_now);
  IF p_event IS NULL THEN
    RETURN 0;
  END IF;
  INSERT INTO budget_pending AS b (event_id, counter, amount, kept, settled_at)
    SELECT p_event, u.k, u.s, u.a - u.s, p_now FROM unnest(p_keys, p_amounts, p_shown) AS u(k, a, s) ORDER BY 2
  ON CONFLICT (event_id, counter) DO UPDATE SET amount = b.amount + excluded.amount,
    kept = b.kept + excluded.kept, settled_at = excluded.settled_at;
  IF to_regclass('events') IS NOT NULL THEN
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)' INTO found_event USING p_event;
  END IF;
  RETURN CASE WHEN found_event THEN 1 ELSE 0 END;
END
$fn$""",
}


def _budget_owners_and_functions(db: DB) -> None:
    for stmt in split_statements(_BUDGET_OWNERS):
        db.execute(stmt)
    for name, body in _BUDGET_FUNCTIONS.items():
        if db.execute("SELECT to_regproc(?)", (name,))[0][0] is None:
            db.execute(body)


migration("0013_budget_owners_and_functions", _BUDGET_OWNERS, postgres=_budget_owners_and_functions)

# what a running server looks for every second to show other processes' calls on its live pages
# (imports, `--watch`, `wrap()` elsewhere): only those rows are in the index, never the proxy's
migration(
    "0014_events_not_proxy",
    "CREATE INDEX IF NOT EXISTS events_not_proxy_ts ON events (ts_us) WHERE source <> 'proxy';",
)
