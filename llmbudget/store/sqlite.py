"""The default ledger: one SQLite file in WAL mode (readers never wait for the writer).

One write connection, serialised by a lock and `BEGIN IMMEDIATE` (so several processes on the
same file take turns), and one read connection per thread. `synchronous=NORMAL` in WAL mode keeps
every committed batch across a process crash; only a power cut can lose the last commits, and
those events are also in the audit log, which is fsynced.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..config import default_db_url
from ..errors import StorageError
from .connection import DB
from .dialect import execute_in_chunks, multirow_statements
from .rows import EVENT_COLUMNS
from .sqlbase import SQLLedger

#: what to check when the file cannot be opened
_CHECK = (
    "Check that the path is right, that its directory is writable and that it is an llmbudget database "
    "(set by --db, $LLMBUDGET_DB or storage.url in the config)."
)

#: page cache of a reading connection, in KiB (rollup pages stay hot; pages are read through mmap)
READER_CACHE_KIB = 65536
#: page cache of the one writing connection, in KiB. The writer appends (ids and times ascend), so
#: a few MiB hold every page it touches; a 64 MiB cache grew the server's memory by every page it
#: ever wrote, up to 64 MiB more than this.
WRITER_CACHE_KIB = 4096


def _null(value: None) -> None:
    return None


# sqlite3 binds None as NULL, but first looks for an adapter for every value that is not exactly an
# int, float or str; for None that search raises and clears an AttributeError inside C, about
# 0.2 µs per value, and an event row holds a dozen NULLs (session, team, task, reason, ...). With an
# adapter registered for NoneType the search is one dict lookup; its None still binds as NULL.
sqlite3.register_adapter(type(None), _null)

#: the events' INSERT for 256, 64, 16, 4 and 1 rows
_INSERTS = multirow_statements(
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ", f"({', '.join('?' * len(EVENT_COLUMNS))})"
)


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert `rows` with a few multi-row statements (`execute_in_chunks`)."""
    execute_in_chunks(conn.execute, _INSERTS, rows)


def sqlite_path(url_or_path: str) -> Path:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db` or a plain path, as a Path (`~` expanded)."""
    s = url_or_path
    if s.startswith("sqlite:///"):
        s = s[len("sqlite:///") :]
    elif s.startswith("sqlite://"):
        raise StorageError(f"unsupported SQLite URL {url_or_path!r}; use sqlite:///path/to/file.db")
    if not s or s == ":memory:":
        raise StorageError("an in-memory SQLite ledger is not supported; give a file path")
    return Path(s).expanduser().absolute()


class _SQLiteDB:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.executemany(sql, rows)


class SQLiteLedger(SQLLedger):
    """The ledger in a SQLite file (default `~/.local/share/llmbudget/llmbudget.db`)."""

    dialect = "sqlite"

    def __init__(
        self,
        url_or_path: str | None = None,
        *,
        audit_log: str | None = None,
        audit: bool = True,
        batch_size: int = 2000,
        flush_interval_s: float = 0.2,
        busy_timeout_s: float = 30.0,
        durability: str = "write",
        replay_audit: bool = True,
        pool_size: int | None = None,
        instance: str = "",
    ) -> None:
        del pool_size  # PostgreSQL only; SQLite opens a connection per thread
        self.path = sqlite_path(url_or_path or default_db_url())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the directory for the SQLite ledger {self.path}: {e}") from e
        self._busy_timeout_s = busy_timeout_s
        self._wlock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._local = threading.local()
        super().__init__(
            f"sqlite:///{self.path}",
            audit_log=audit_log,
            audit=audit,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            spool_dir=self.path.parent,
            durability=durability,
            instance=instance,
        )
        self._replay_on_start = replay_audit
        self._wconn = self._connect(cache_kib=WRITER_CACHE_KIB)
        mode = self._enter_wal()
        if str(mode).lower() != "wal":
            raise StorageError(f"cannot switch {self.path} to WAL mode (got {mode!r})")
        self._start()

    def _enter_wal(self) -> str:
        """Switch to WAL, waiting out other processes that open the same new file at the same moment.

        Changing the journal mode can fail with "database is locked" at once, without SQLite's busy
        handler, while another connection is creating the file or switching it itself.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.01
        while True:
            try:
                return str(self._wconn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as e:
                if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                    raise StorageError(f"cannot open the SQLite ledger {self.path}: {e}. {_CHECK}") from e
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
            except sqlite3.Error as e:
                raise StorageError(f"cannot open the SQLite ledger {self.path}: {e}. {_CHECK}") from e

    def _connect(self, cache_kib: int = READER_CACHE_KIB) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA mmap_size=268435456")  # reports read rollup pages without copies
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the SQLite ledger {self.path}: {e}. {_CHECK}") from e
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[DB]:
        with self._wlock:
            conn = self._wconn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StorageError(f"cannot write to the SQLite ledger {self.path}: {e}") from e
            try:
                yield _SQLiteDB(conn)
                conn.execute("COMMIT")
            except BaseException as e:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StorageError(f"cannot write to the SQLite ledger {self.path}: {e}") from e
                raise

    @contextmanager
    def _read(self) -> Iterator[DB]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        try:
            conn.execute("BEGIN")  # one snapshot for every statement of a report
            yield _SQLiteDB(conn)
        except sqlite3.Error as e:
            raise StorageError(f"cannot read the SQLite ledger {self.path}: {e}") from e
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _insert_new(self, db: DB, rows: list[tuple[Any, ...]]) -> set[str]:
        # Fast path: a batch is nearly always all new, so insert it whole inside a savepoint. A
        # repeated id (spool replay, re-import) fails the primary key; then undo the savepoint and
        # insert only the ids not stored yet. Under BEGIN IMMEDIATE no other writer can add an id
        # in between. (A pre-check SELECT per batch cost a statement prepare for every batch size.)
        if not rows:
            return set()
        conn = db.conn  # type: ignore[attr-defined]
        conn.execute("SAVEPOINT new_events")
        try:
            _insert_rows(conn, rows)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO new_events")
            conn.execute("RELEASE new_events")
            return self._insert_missing(db, rows)
        conn.execute("RELEASE new_events")
        return {r[0] for r in rows}

    def _insert_missing(self, db: DB, rows: list[tuple[Any, ...]]) -> set[str]:
        ids = [r[0] for r in rows]
        existing: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            existing.update(
                r[0]
                for r in db.execute(
                    f"SELECT id FROM events WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                )
            )
        new = [r for r in rows if r[0] not in existing]
        _insert_rows(db.conn, new)  # type: ignore[attr-defined]
        return {r[0] for r in new}

    def _lock_migrations(self, db: DB) -> None:
        """BEGIN IMMEDIATE already holds the database's write lock."""

    def _is_outage(self, e: BaseException) -> bool:
        # locked, busy, disk I/O, cannot open: the file is there but not writable now; anything
        # else (an integer SQLite cannot hold, text it cannot encode, a constraint) is the data's fault
        while e is not None:
            if isinstance(e, sqlite3.OperationalError | OSError) and not isinstance(e, OverflowError):
                return True
            e = e.__cause__  # type: ignore[assignment]
        return False

    def _close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()
