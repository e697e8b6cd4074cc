"""The SQL ledger (SQLite and PostgreSQL): its life cycle and the write path, with its parts mixed in.

`record_batch` appends the events to the audit log and hands them to the background writer
(`llmbudget/store/writer.py`), whose thread calls `_commit`: one transaction inserts the new rows
(the back-end's `_insert_new`, which must return the ids actually inserted so that rollups only
ever count new rows) and adds them to the rollups and sessions. What `SQLLedger` mixes in, one
module each:

- `llmbudget/store/rollups.py`: the rollups' and sessions' upkeep, re-pricing (`update_costs`);
- `llmbudget/store/reads.py`: reading events, sessions and unpriced models;
- `llmbudget/store/cost_report.py`: the cost report;
- `llmbudget/store/side_tables.py`: quota readings and the state table;
- `llmbudget/store/replay.py`: the audit log's replay and checkpoint.

A back-end supplies connections (`_tx()` for a write transaction, `_read()` for reads, declared
in `llmbudget/store/connection.py`), its idempotent insert and a few spellings. SQL uses `?`
placeholders; the PostgreSQL wrapper rewrites them. The events table's row codec is
`llmbudget/store/rows.py`'s.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..config import mask_url
from ..errors import DatabaseUnreachable, StorageError, ValidationError
from ..events import UsageEvent
from . import shutdown
from .base import Ledger
from .connection import DB
from .cost_report import CostReports
from .jsonl import AuditLog
from .migrations import apply_migrations
from .reads import EventReads
from .replay import AuditReplay
from .rollups import Rollups, hourly_of
from .rows import event_to_row
from .side_tables import SideTables
from .spool import Quarantine, Spool
from .writer import BatchWriter, _Outage

log = logging.getLogger(__name__)


#: `storage.durability`: `write` (one write per event, survives a killed process) or `fsync`
#: (plus group-committed fsync: survives a power cut)
DURABILITY = ("write", "fsync")


class SQLLedger(EventReads, CostReports, Rollups, AuditReplay, SideTables, Ledger):
    """The shared implementation; subclasses provide connections and the dialect's insert."""

    def __init__(
        self,
        url: str,
        *,
        audit_log: str | None,
        audit: bool,
        batch_size: int,
        flush_interval_s: float,
        spool_dir: Path,
        durability: str = "write",
        instance: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValidationError("batch_size", "must be at least 1")
        if durability not in DURABILITY:
            raise ValidationError("durability", f"must be one of {', '.join(DURABILITY)}, got {durability!r}")
        self.url = url
        self.batch_size = batch_size
        #: record_many's transaction size: bulk loads gain from bigger batches than the live queue
        self.import_batch_size = max(batch_size, 10_000)
        self.flush_interval_s = flush_interval_s
        self.durability = durability
        self._closed = False
        #: called with each event `record()` accepts (the live fan-out's non-blocking publish)
        self.on_record: list[Callable[[UsageEvent], None]] = []
        self.audit_path: Path | None = None
        self._audit: AuditLog | None = None
        tail = f"-{instance}" if instance else ""  # one of several processes: files of its own
        if audit:
            path = Path(audit_log) if audit_log else spool_dir / "audit.jsonl"
            self.audit_path = path.with_name(f"{path.stem}{tail}{path.suffix}") if tail else path
        #: the database's own id (tags its audit lines), read or made when the ledger starts
        self.ledger_id = ""
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        self.spool_path = spool_dir / f"spool-{digest}{tail}.jsonl"
        self.quarantine_path = spool_dir / f"quarantine-{digest}{tail}.jsonl"
        self._writer = BatchWriter(
            self._commit,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            spool=Spool(self.spool_path),
            quarantine=Quarantine(self.quarantine_path),
            is_outage=self._is_outage,
            probe=self._probe,
        )
        #: (audit file size, events accepted) when the last checkpoint pass looked: see `_checkpoint`
        self._cp_pending: tuple[int, int] | None = None
        #: ids of the audit file's lines from before this process opened it, as the start-up replay saw
        self.replayed_at_start = 0

    def _start(self) -> None:
        """Migrate, register for shutdown flushing, replay the spool and the audit log's tail."""
        #: (name, applied_at, applied by this open) of every migration
        self.migrations_applied_now = self.migrate()
        fresh = bool(self.migrations_applied_now) and all(now for _, _, now in self.migrations_applied_now)
        self.ledger_id = self._identity()
        if self.audit_path is not None:
            self._audit = AuditLog(self.audit_path, fsync=self.durability == "fsync", ledger=self.ledger_id)
        shutdown.register(self)
        if self._writer.spool.pending():
            try:
                self._writer.spool.replay(
                    self._writer.commit_or_split, self.batch_size, self._writer.quarantine_line
                )
            except Exception as e:  # still down for the spool's sake; the writer retries
                log.warning("spool_replay_at_open_failed error=%s", e)
        if self._audit is not None and getattr(self, "_replay_on_start", True):
            try:
                self.replayed_at_start = self.replay_audit(from_end=fresh)
            except Exception as e:  # never stops the ledger from opening; the next start tries again
                log.warning("audit_replay_failed path=%s error=%s", self.audit_path, e)
        if self._audit is not None and getattr(self, "_replay_on_start", True):
            self._writer.periodic = self._checkpoint

    def _identity(self) -> str:
        """The database's id, made once by whichever process opens it first."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO state (namespace, key, value, updated_us) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, key) DO NOTHING",
                ("ledger", "identity", json.dumps({"id": uuid.uuid4().hex[:16]}), time.time_ns() // 1000),
            )
            rows = db.execute(
                "SELECT value FROM state WHERE namespace = ? AND key = ?", ("ledger", "identity")
            )
        return str(json.loads(rows[0][0])["id"])

    # ------------------------------------------------------------------ outages
    def _is_outage(self, e: BaseException) -> bool:
        """A failure to reach the database (spool and retry), as opposed to bad data (split, quarantine)."""
        return isinstance(e, DatabaseUnreachable | OSError) and not isinstance(e, OverflowError)

    def _probe(self) -> bool:
        """A quick check that the database answers again (before replaying the spool)."""
        return True

    # ------------------------------------------------------------------ back-end hooks (`_tx`, `_read`: `Connections`)
    @abstractmethod
    def _insert_new(self, db: DB, rows: list[tuple[Any, ...]]) -> set[str]:
        """Insert rows whose id is not stored yet; return the ids actually inserted."""

    @abstractmethod
    def _lock_migrations(self, db: DB) -> None:
        """Keep two processes from migrating the same database at once."""

    # ------------------------------------------------------------------ migrations
    def migrate(self) -> list[tuple[str, str, bool]]:
        """Apply missing migrations; returns (name, applied_at, applied_now) for every migration."""
        return apply_migrations(self._tx, self.dialect, self._lock_migrations)

    def applied_migrations(self) -> list[tuple[str, str]]:
        """(name, applied_at) of every migration recorded in the database."""
        with self._read() as db:
            return [
                (r[0], str(r[1])) for r in db.execute("SELECT name, applied_at FROM migrations ORDER BY name")
            ]

    # ------------------------------------------------------------------ writes
    def record(self, event: UsageEvent) -> None:
        self.record_batch([event])

    def record_batch(self, events: list[UsageEvent]) -> None:
        if self._closed:
            raise StorageError(f"the ledger at {self._masked()} is closed")
        for event in events:
            if not isinstance(event, UsageEvent):
                raise ValidationError("event", f"must be a UsageEvent, got {type(event).__name__}")
        audit = self._audit
        if audit is not None:
            try:  # the write-ahead record: on disk (page cache) before the caller answers anyone
                audit.write_many(events)
            except OSError as e:  # the database write below still happens; never lose the event
                log.error("audit_log_write_failed path=%s error=%s", self.audit_path, e)
        submit = self._writer.submit
        hooks = self.on_record
        for event in events:
            submit(event)
            for fn in hooks:
                fn(event)

    def quarantined(self) -> list[dict[str, Any]]:
        """Events the database refused on their data, oldest first: `{quarantined_at, reason, event}`."""
        return self._writer.quarantine.entries() if self._writer.quarantine is not None else []

    def wait_durable(self) -> None:
        """With `durability: fsync`, block until every recorded event's audit line is on disk."""
        if self._audit is not None:
            self._audit.wait_synced()

    def durable_future(self) -> concurrent.futures.Future[None] | None:
        """A future for `wait_durable()` (None when there is nothing to wait for), for async callers."""
        return None if self._audit is None else self._audit.synced_future()

    def record_many(self, events: Iterable[UsageEvent]) -> int:
        if self._closed:
            raise StorageError(f"the ledger at {self._masked()} is closed")
        added = 0
        batch: list[UsageEvent] = []
        for ev in events:
            if not isinstance(ev, UsageEvent):
                raise ValidationError("event", f"must be a UsageEvent, got {type(ev).__name__}")
            batch.append(ev)
            if len(batch) >= self.import_batch_size:
                added += self._commit_logged(batch)
                batch = []
        if batch:
            added += self._commit_logged(batch)
        return added

    def _commit_logged(self, events: list[UsageEvent]) -> int:
        """Commit (data errors split off and quarantined), then append the new events to the audit log."""
        fresh: list[UsageEvent] = []
        try:
            added = self._writer.commit_or_split(events, commit=lambda evs: self._commit(evs, fresh))
        except _Outage as o:
            raise o.error from None
        if self._audit is not None and fresh:
            try:
                self._audit.append(fresh)
            except OSError as e:  # the database has the events; a failing audit file must not lose them
                log.error("audit_log_write_failed path=%s error=%s", self.audit_path, e)
        return added

    def flush(self) -> None:
        self._writer.flush()

    def writer_stats(self) -> dict[str, float]:
        """CPU spent by the background writer behind `record()`: batches, events, CPU µs per event."""
        return self._writer.stats()

    def close(self) -> None:
        if self._closed:
            return
        self._writer.close()
        self._closed = True
        shutdown.unregister(self)
        if self._audit is not None:
            if getattr(self, "_replay_on_start", True) and not self._writer.spool.pending():
                try:  # everything is in: the next start replays nothing written before now
                    self._checkpoint(final=True)
                except Exception as e:
                    log.warning("audit_checkpoint_failed path=%s error=%s", self.audit_path, e)
            self._audit.close()
        self._close_connections()

    def _close_connections(self) -> None:
        """Release connections (subclasses)."""

    def _commit(self, events: list[UsageEvent], fresh: list[UsageEvent] | None = None) -> int:
        """One transaction: new events, their rollups and sessions. Returns rows added.

        The events that were new are added to `fresh` when given (`record_many` logs them; events
        from `record()` were logged when accepted).
        """
        rows = [event_to_row(ev) for ev in events]
        if len({r[0] for r in rows}) != len(rows):  # a repeated id in one batch is stored and logged once
            first: dict[str, int] = {}
            for i, r in enumerate(rows):
                first.setdefault(r[0], i)
            keep = sorted(first.values())
            rows, events = [rows[i] for i in keep], [events[i] for i in keep]
        with self._tx() as db:
            new_ids = self._insert_new(db, rows)
            all_new = len(new_ids) == len(rows)
            new_rows = rows if all_new else [r for r in rows if r[0] in new_ids]
            if new_rows:
                self._upsert_rollups(db, hourly_of(new_rows))
                self._apply_sessions(db, new_rows)
        if new_rows and fresh is not None:
            fresh.extend(events if all_new else [ev for ev in events if ev.id in new_ids])
        return len(new_rows)

    # ------------------------------------------------------------------ helpers
    def _masked(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._masked()}>"
