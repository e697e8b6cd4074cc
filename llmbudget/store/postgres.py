"""The team ledger: PostgreSQL through psycopg 3 and a `psycopg_pool.ConnectionPool`.

Several proxy replicas may write at once: the insert is `INSERT ... SELECT FROM unnest(...)
ON CONFLICT (id) DO NOTHING RETURNING id`, so each replica adds to the rollups only the rows it
really inserted, and rollup rows are upserted in a fixed order so that concurrent batches never
deadlock. The audit log and the outage spool live in `llmbudget.config.data_dir()`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..config import data_dir, mask_url
from ..errors import DatabaseMissing, DatabaseUnreachable, StorageError
from .connection import DB
from .dialect import pg_sql
from .migrations import lock_migrations
from .rows import EVENT_COLUMNS
from .sqlbase import SQLLedger

# psycopg and psycopg_pool are the optional `postgres` extra: imported where used, so the module
# loads (and reports a missing extra clearly) without them.

_PG_TYPES = {
    "ts_us": "bigint",
    "input_tokens": "bigint",
    "cached_input_tokens": "bigint",
    "cache_write_tokens": "bigint",
    "output_tokens": "bigint",
    "reasoning_tokens": "bigint",
    "cost_nano": "bigint",
    "http_status": "integer",
    "streamed": "integer",
    "duration_ms": "double precision",
    "ttft_ms": "double precision",
    "cache_write_1h_tokens": "bigint",
}
_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%s::{_PG_TYPES.get(c, 'text')}[]" for c in EVENT_COLUMNS)
    + ") ON CONFLICT (id) DO NOTHING RETURNING id"
)


def _conninfo(url: str) -> dict[str, Any]:
    """The parts of a PostgreSQL URL or conninfo string (host, port, user, dbname, ...); {} when unreadable."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        return dict(conninfo_to_dict(url))
    except Exception:  # psycopg missing or a string libpq cannot parse: the caller reports the URL as is
        return {}


def _missing_database(url: str, reason: object) -> str | None:
    """The database name when the server answered that it has no such database (SQLSTATE 3D000)."""
    text = str(reason)
    if getattr(reason, "sqlstate", None) != "3D000" and not re.search(
        r'database "[^"]*" does not exist', text
    ):
        return None
    return str(_conninfo(url).get("dbname") or "") or None


def create_database_hint(url: str, *, offer_create: bool = True) -> str:
    """The shell commands that create the database named in `url` on its server (and `db migrate --create`)."""
    info = _conninfo(url)
    name = str(info.get("dbname") or "llmbudget")
    flags = " ".join(
        f"{flag} {info[key]}"
        for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user"))
        if info.get(key)
    )
    flags = f"{flags} " if flags else ""
    quoted = name.replace('"', '""')
    by_hand = f"`createdb {flags}{name}` or `psql {flags}-d postgres -c 'CREATE DATABASE \"{quoted}\"'`"
    return by_hand + (", or let llmbudget do it: `llmbudget db migrate --create`" if offer_create else "")


def create_database(url: str, *, connect_timeout_s: float = 5.0) -> bool:
    """Create the database named in `url`, connecting to the same server's `postgres` database.

    Returns False when it already exists. The user in the URL needs the CREATEDB privilege.
    """
    try:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import make_conninfo
    except ImportError as e:
        raise StorageError("PostgreSQL support needs psycopg: pip install 'llmbudget[postgres]'") from e
    name = str(_conninfo(url).get("dbname") or "")
    if not name:
        raise StorageError(f"{mask_url(url)} names no database to create")
    try:
        with psycopg.connect(
            make_conninfo(url, dbname="postgres"),
            autocommit=True,
            connect_timeout=max(1, round(connect_timeout_s)),
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        return False
    except psycopg.Error as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(
            f"cannot create database {name!r} on the server of {mask_url(url)} ({why}); "
            f"create it by hand: {create_database_hint(url, offer_create=False)}"
        ) from e
    return True


def unreachable(url: str, reason: object) -> DatabaseUnreachable:
    """The error for a PostgreSQL server that does not answer: URL (password masked) and what to check."""
    missing = _missing_database(url, reason)
    if missing is not None:
        return DatabaseMissing(
            f"the PostgreSQL server of {mask_url(url)} has no database {missing!r}; create it with "
            f"{create_database_hint(url)}"
        )
    why = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return DatabaseUnreachable(
        f"cannot reach PostgreSQL at {mask_url(url)} ({why}). Check that the server is running, that the "
        "host, port, database name and user in the URL are right, and that it accepts connections "
        "(for local development `make services` starts it)."
    )


class _PGDB:
    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(pg_sql(sql), params or None)
        return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(pg_sql(sql), rows)


class PostgresLedger(SQLLedger):
    """The ledger in a PostgreSQL database (`postgresql://user:pass@host:5432/db`)."""

    dialect = "postgres"
    _least = "LEAST"
    _greatest = "GREATEST"

    def __init__(
        self,
        url: str,
        *,
        audit_log: str | None = None,
        audit: bool = True,
        batch_size: int = 2000,
        flush_interval_s: float = 0.2,
        pool_size: int = 4,
        connect_timeout_s: float = 5.0,
        durability: str = "write",
        replay_audit: bool = True,
        instance: str = "",
    ) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as e:
            raise StorageError("PostgreSQL support needs psycopg: pip install 'llmbudget[postgres]'") from e
        self._psycopg = psycopg
        timeout = max(1, round(connect_timeout_s))
        try:  # one direct attempt first, for a clear error instead of a pool timeout
            psycopg.connect(url, connect_timeout=timeout, autocommit=True).close()
        except psycopg.Error as e:
            raise unreachable(url, e) from e
        super().__init__(
            url,
            audit_log=audit_log,
            audit=audit,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            spool_dir=data_dir(),
            durability=durability,
            instance=instance,
        )
        self._replay_on_start = replay_audit
        self._connect_timeout = timeout
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": timeout},
            check=ConnectionPool.check_connection,
            name="llmbudget-ledger",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as e:
            self._pool.close()
            raise unreachable(url, e) from e
        try:
            self._start()
        except BaseException:
            self._pool.close()
            raise

    def _errors(self) -> tuple[type[BaseException], ...]:
        from psycopg_pool import PoolTimeout

        return (self._psycopg.OperationalError, PoolTimeout)

    @contextmanager
    def _tx(self) -> Iterator[DB]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _PGDB(conn)
        except self._errors() as e:
            raise unreachable(self.url, e) from e

    @contextmanager
    def _read(self) -> Iterator[DB]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _PGDB(conn)
        except self._errors() as e:
            raise unreachable(self.url, e) from e

    def _insert_new(self, db: DB, rows: list[tuple[Any, ...]]) -> set[str]:
        if not rows:
            return set()
        columns = [list(col) for col in zip(*rows, strict=True)]
        conn = db.conn  # type: ignore[attr-defined]
        return {r[0] for r in conn.execute(_INSERT, columns).fetchall()}

    def _lock_migrations(self, db: DB) -> None:
        lock_migrations(db)

    def _is_outage(self, e: BaseException) -> bool:
        return isinstance(e, (DatabaseUnreachable, OSError, *self._errors())) and not isinstance(
            e, OverflowError
        )

    def _probe(self) -> bool:
        """One direct connection attempt (2 s at most): cheaper than waiting out the pool's timeout."""
        try:
            self._psycopg.connect(self.url, connect_timeout=2, autocommit=True).close()
        except self._psycopg.Error:
            return False
        # the pool backs off while the server is away; have it replace its broken connections now
        with contextlib.suppress(Exception):
            self._pool.check()
        return True

    def _close_connections(self) -> None:
        self._pool.close()
