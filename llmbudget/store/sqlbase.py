"""What SQLite and PostgreSQL ledgers share: schema mapping, batched writes with rollups, and every read.

A back-end supplies connections (`_tx()` for a write transaction, `_read()` for reads), its
idempotent insert (`_insert_new`, which must return the ids actually inserted so that rollups
only ever count new rows) and a few spellings. SQL here uses `?` placeholders; the PostgreSQL
wrapper rewrites them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from .. import attribution_table
from ..config import mask_url
from ..errors import DatabaseUnreachable, StorageError, ValidationError
from ..events import PRICE_STATUSES, UsageEvent, parse_timestamp
from ..money import from_nano, to_nano
from . import shutdown
from .base import DIMENSIONS, FILTER_FIELDS, TIME_BUCKETS, CostRow, Ledger, SessionRow, UnpricedModel
from .buckets import EPOCH, US_PER_DAY, US_PER_HOUR, Plan, from_us, merge_ranges, plan, to_us
from .jsonl import AuditLog
from .migrations import ROLLUP_DIMS, apply_migrations
from .replay import AuditReplay
from .writer import BatchWriter, Quarantine, Spool, _Outage

log = logging.getLogger(__name__)


class DB(Protocol):
    """A connection wrapper: `?` placeholders, results as lists of tuples."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


#: event columns in storage order; `user` is stored as `user_name`
EVENT_COLUMNS = (
    "id",
    "ts_us",
    "backend",
    "provider",
    "model",
    "request_model",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nano",
    "price_status",
    "agent",
    "session",
    "user_name",
    "team",
    "task_id",
    "task_type",
    "tier",
    "tags",
    "status",
    "http_status",
    "streamed",
    "duration_ms",
    "ttft_ms",
    "source",
    "key",
    "cache_write_1h_tokens",
    "service_tier",
    "units",
    "reason",
)
#: event field -> column where they differ (only attribution fields do: `attribution_table`)
COLUMN_OF = attribution_table.COLUMN_OF
#: the dimension fields kept in the rollups (event attribute names)
ROLLUP_FIELDS = tuple("user" if c == "user_name" else c for c in ROLLUP_DIMS)
SUM_COLUMNS = (
    "calls",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nano",
    "unpriced_calls",
)
_ROLLUP_SUMS_SQL = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)
_RAW_SUMS_SQL = (
    "COUNT(*), SUM(input_tokens), SUM(cached_input_tokens), SUM(cache_write_tokens), "
    "SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_nano), "
    "SUM(CASE WHEN cost_nano IS NULL THEN 1 ELSE 0 END)"
)
_CHUNK = 500  # ids per IN (...) list
_ONE_US = timedelta(microseconds=1)


def column(field: str) -> str:
    """The events column of an event field."""
    return COLUMN_OF.get(field, field)


def event_to_row(ev: UsageEvent) -> tuple[Any, ...]:
    """A UsageEvent as a row in EVENT_COLUMNS order."""
    c = ev.cost_usd
    if c is None:
        nano = None
    else:  # to_nano() without its type checks: the event was validated; exact unless finer than 1e-9
        scaled = c.scaleb(9)
        nano = int(scaled)
        if nano != scaled:
            nano = to_nano(c)
    return (
        ev.id,
        (ev.timestamp - EPOCH) // _ONE_US,
        ev.backend,
        ev.provider,
        ev.model,
        ev.request_model,
        ev.input_tokens,
        ev.cached_input_tokens,
        ev.cache_write_tokens,
        ev.output_tokens,
        ev.reasoning_tokens,
        nano,
        ev.price_status,
        ev.agent,
        ev.session,
        ev.user,
        ev.team,
        ev.task_id,
        ev.task_type,
        ev.tier,
        _tags_json(ev.tags) if ev.tags else "{}",
        ev.status,
        ev.http_status,
        1 if ev.streamed else 0,
        ev.duration_ms,
        ev.ttft_ms,
        ev.source,
        ev.key,
        ev.cache_write_1h_tokens,
        ev.service_tier,
        _tags_json(ev.units) if ev.units else "{}",
        ev.reason,
    )


def _tags_json(tags: dict[str, str] | dict[str, int]) -> str:
    return json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_to_event(r: Sequence[Any]) -> UsageEvent:
    """A row in EVENT_COLUMNS order back to a UsageEvent."""
    return UsageEvent(
        id=r[0],
        timestamp=from_us(int(r[1])),
        backend=r[2],
        provider=r[3],
        model=r[4],
        request_model=r[5],
        input_tokens=int(r[6]),
        cached_input_tokens=int(r[7]),
        cache_write_tokens=int(r[8]),
        output_tokens=int(r[9]),
        reasoning_tokens=int(r[10]),
        cost_usd=None if r[11] is None else from_nano(int(r[11])),
        price_status=r[12],
        agent=r[13],
        session=r[14],
        user=r[15],
        team=r[16],
        task_id=r[17],
        task_type=r[18],
        tier=r[19],
        tags=json.loads(r[20]) if r[20] else {},
        status=r[21],
        http_status=r[22],
        streamed=bool(r[23]),
        duration_ms=r[24],
        ttft_ms=r[25],
        source=r[26],
        key=r[27],
        cache_write_1h_tokens=int(r[28]),
        service_tier=r[29],
        units=json.loads(r[30]) if r[30] and r[30] != "{}" else {},
        reason=r[31],
    )


def _sums_of(ev_row: Sequence[Any]) -> list[int]:
    # ev_row in EVENT_COLUMNS order
    cost = ev_row[11]
    return [1, ev_row[6], ev_row[7], ev_row[8], ev_row[9], ev_row[10], cost or 0, 1 if cost is None else 0]


_dim_values = itemgetter(*(EVENT_COLUMNS.index(c) for c in ROLLUP_DIMS))


def _dims_of(ev_row: Sequence[Any]) -> tuple[str, ...]:
    return tuple([v or "" for v in _dim_values(ev_row)])


def _hourly_of(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[int]]:
    """Hourly rollup sums of new event rows, keyed by (hour, *dims): one pass, no per-event lists."""
    raw: dict[tuple[Any, ...], list[int]] = {}
    for r in rows:
        key = (r[1] // US_PER_HOUR, _dim_values(r))
        acc = raw.get(key)
        cost = r[11]
        if acc is None:
            raw[key] = [1, r[6], r[7], r[8], r[9], r[10], cost or 0, 1 if cost is None else 0]
        else:
            acc[0] += 1
            acc[1] += r[6]
            acc[2] += r[7]
            acc[3] += r[8]
            acc[4] += r[9]
            acc[5] += r[10]
            if cost is None:
                acc[7] += 1
            else:
                acc[6] += cost
    # rollup keys hold '' for "not set"; two raw keys differing only in None vs '' share a row
    out: dict[tuple[Any, ...], list[int]] = {}
    for (hour, dims), sums in raw.items():
        key = (hour, *[v or "" for v in dims])
        acc = out.get(key)
        if acc is None:
            out[key] = sums
        else:
            for i, v in enumerate(sums):
                acc[i] += v
    return out


def _rollup_sql(name: str, bucket: str) -> tuple[str, str]:
    cols = (bucket, *ROLLUP_DIMS, *SUM_COLUMNS)
    upsert = (
        f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT ({bucket}, {', '.join(ROLLUP_DIMS)}) DO UPDATE SET "
        + ", ".join(f"{c} = {name}.{c} + excluded.{c}" for c in SUM_COLUMNS)
    )
    cond = " AND ".join(f"{c} = ?" for c in (bucket, *ROLLUP_DIMS))
    return upsert, f"DELETE FROM {name} WHERE {cond} AND calls = 0"


#: the same statement text every batch, so the driver's prepared-statement cache is hit
_ROLLUP_SQL = {
    "rollup_hourly": _rollup_sql("rollup_hourly", "hour"),
    "rollup_daily": _rollup_sql("rollup_daily", "day"),
}


#: `storage.durability`: `write` (one write per event, survives a killed process) or `fsync`
#: (plus group-committed fsync: survives a power cut)
DURABILITY = ("write", "fsync")


class SQLLedger(Ledger, AuditReplay):
    """The shared implementation; subclasses provide connections and the dialect's insert."""

    dialect: str = ""
    #: SQL spelling of two-argument min/max
    _least = "MIN"
    _greatest = "MAX"

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

    # ------------------------------------------------------------------ back-end hooks
    @abstractmethod
    def _tx(self) -> AbstractContextManager[DB]:
        """A write transaction (serialised against other writers)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[DB]:
        """A connection for reads."""

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
                self._upsert_rollups(db, _hourly_of(new_rows))
                self._apply_sessions(db, new_rows)
        if new_rows and fresh is not None:
            fresh.extend(events if all_new else [ev for ev in events if ev.id in new_ids])
        return len(new_rows)

    def _apply_rollups(self, db: DB, items: list[tuple[int, tuple[str, ...], list[int]]]) -> None:
        """Add signed sums to the hourly and daily rollups: items are (ts_us, dims, sums)."""
        hourly: dict[tuple[Any, ...], list[int]] = {}
        for ts, dims, sums in items:
            key = (ts // US_PER_HOUR, *dims)
            acc = hourly.get(key)
            if acc is None:
                hourly[key] = list(sums)
            else:
                for i, v in enumerate(sums):
                    acc[i] += v
        self._upsert_rollups(db, hourly)

    def _upsert_rollups(self, db: DB, hourly: dict[tuple[Any, ...], list[int]]) -> None:
        """Add hourly sums (keyed by (hour, *dims)) to both rollups; rows summing to no calls are removed."""
        daily: dict[tuple[Any, ...], list[int]] = {}
        hours_per_day = US_PER_DAY // US_PER_HOUR
        for hkey, sums in hourly.items():
            key = (hkey[0] // hours_per_day, *hkey[1:])
            acc = daily.get(key)
            if acc is None:
                daily[key] = list(sums)
            else:
                for i, v in enumerate(sums):
                    acc[i] += v
        for name, table in (("rollup_hourly", hourly), ("rollup_daily", daily)):
            upsert, delete = _ROLLUP_SQL[name]
            # a fixed order keeps concurrent PostgreSQL writers from deadlocking on these rows
            keys = sorted(table)
            db.executemany(upsert, [(*k, *table[k]) for k in keys])
            emptied = [k for k in keys if table[k][0] < 0]
            if emptied:
                db.executemany(delete, emptied)

    def _apply_sessions(self, db: DB, rows: list[tuple[Any, ...]]) -> None:
        per: dict[str, list[int]] = {}
        agents: set[tuple[str, str]] = set()
        for r in rows:
            s = r[14]
            if not s:
                continue
            ts, cost = r[1], r[11]
            acc = per.get(s)
            if acc is None:
                per[s] = [ts, ts, 1, r[6], r[9], cost or 0, 1 if cost is None else 0]
            else:
                acc[0] = min(acc[0], ts)
                acc[1] = max(acc[1], ts)
                acc[2] += 1
                acc[3] += r[6]
                acc[4] += r[9]
                acc[5] += cost or 0
                acc[6] += 1 if cost is None else 0
            if r[13]:
                agents.add((s, r[13]))
        if per:
            db.executemany(
                "INSERT INTO sessions (session, first_us, last_us, calls, input_tokens, output_tokens, cost_nano, "
                "unpriced_calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session) DO UPDATE SET "
                f"first_us = {self._least}(sessions.first_us, excluded.first_us), "
                f"last_us = {self._greatest}(sessions.last_us, excluded.last_us), "
                "calls = sessions.calls + excluded.calls, "
                "input_tokens = sessions.input_tokens + excluded.input_tokens, "
                "output_tokens = sessions.output_tokens + excluded.output_tokens, "
                "cost_nano = sessions.cost_nano + excluded.cost_nano, "
                "unpriced_calls = sessions.unpriced_calls + excluded.unpriced_calls",
                [(s, *per[s]) for s in sorted(per)],
            )
        if agents:
            db.executemany(
                "INSERT INTO session_agents (session, agent) VALUES (?, ?) ON CONFLICT DO NOTHING",
                sorted(agents),
            )

    def update_costs(self, changes: Sequence[tuple[str, int | None, str]]) -> int:
        for event_id, nano, status in changes:
            if status not in PRICE_STATUSES:
                raise ValidationError("price_status", f"unknown price status {status!r} for event {event_id}")
            if nano is None and status in ("priced", "override"):
                raise ValidationError(
                    "cost_nano", f"is missing but price_status is {status!r} (event {event_id})"
                )
            if nano is not None and (not isinstance(nano, int) or nano < 0):
                raise ValidationError("cost_nano", f"must be a non-negative integer, got {nano!r}")
        changed = 0
        cols = ", ".join(EVENT_COLUMNS)
        for i in range(0, len(changes), _CHUNK):
            chunk = {c[0]: c for c in changes[i : i + _CHUNK]}
            with self._tx() as db:
                marks = ", ".join("?" * len(chunk))
                old = db.execute(f"SELECT {cols} FROM events WHERE id IN ({marks})", list(chunk))
                items: list[tuple[int, tuple[str, ...], list[int]]] = []
                updates: list[tuple[Any, ...]] = []
                sess: dict[str, list[int]] = {}
                for r in old:
                    _, nano, status = chunk[r[0]]
                    if r[11] == nano and r[12] == status:
                        continue
                    new = list(r)
                    new[11], new[12] = nano, status
                    items.append((r[1], _dims_of(r), [-v for v in _sums_of(r)]))
                    items.append((r[1], _dims_of(new), _sums_of(new)))
                    updates.append((nano, status, r[0]))
                    if r[14]:
                        d = sess.setdefault(r[14], [0, 0])
                        d[0] += (nano or 0) - (r[11] or 0)
                        d[1] += (1 if nano is None else 0) - (1 if r[11] is None else 0)
                if updates:
                    db.executemany("UPDATE events SET cost_nano = ?, price_status = ? WHERE id = ?", updates)
                    self._apply_rollups(db, items)
                    db.executemany(
                        "UPDATE sessions SET cost_nano = cost_nano + ?, unpriced_calls = unpriced_calls + ? "
                        "WHERE session = ?",
                        [(d[0], d[1], s) for s, d in sorted(sess.items())],
                    )
                changed += len(updates)
        return changed

    # ------------------------------------------------------------------ reads
    def get(self, event_id: str) -> UsageEvent | None:
        with self._read() as db:
            rows = db.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?", (event_id,))
        return row_to_event(rows[0]) if rows else None

    @staticmethod
    def _where(
        since: datetime | None, until: datetime | None, filters: dict[str, str] | None
    ) -> tuple[str, list[Any]]:
        conds, params = _time_range(since, until)
        for k, v in (filters or {}).items():
            k = _check_filter(k)
            if v is None:
                conds.append(f"{column(k)} IS NULL")
            else:
                conds.append(f"{column(k)} = ?")
                params.append(v)
        return (" WHERE " + " AND ".join(conds)) if conds else "", params

    def _hour_ranges(
        self,
        db: DB,
        since: datetime | None,
        until: datetime | None,
        filters: dict[str, str] | None,
        newest_first: bool,
    ) -> Iterator[tuple[int, int]] | None:
        """Event-time ranges that can hold matches, from the rollups; None when the filters cannot narrow.

        The events table is indexed on time (and on session and task id), not on every attribution
        field: each index costs ingest speed. A filter on a rollup dimension (agent, user, team,
        model, ...) instead asks `rollup_daily` which UTC days have matching events, then
        `rollup_hourly` which hours of those days, so a rare or misspelt value never scans months
        of raw events. Ranges are clipped to [since, until) and yielded lazily, day by day.
        """
        named = ((_check_filter(k), v) for k, v in (filters or {}).items())
        dims = [(column(k), v) for k, v in named if v is not None and k in ROLLUP_FIELDS]
        if not dims:
            return None
        lo = to_us(since) if since is not None else None
        hi = to_us(until) if until is not None else None
        cond = "".join(f" AND {c} = ?" for c, _ in dims)
        vals = [v for _, v in dims]
        day_sql = f"SELECT DISTINCT day FROM rollup_daily WHERE day >= ? AND day <= ?{cond}"
        day_params = [
            -(1 << 62) if lo is None else lo // US_PER_DAY,
            (1 << 62) if hi is None else (hi - 1) // US_PER_DAY,
            *vals,
        ]
        days = sorted((int(r[0]) for r in db.execute(day_sql, day_params)), reverse=newest_first)
        hour_sql = f"SELECT DISTINCT hour FROM rollup_hourly WHERE hour >= ? AND hour < ?{cond}"
        hours_per_day = US_PER_DAY // US_PER_HOUR

        def ranges() -> Iterator[tuple[int, int]]:
            for day in days:
                hours = sorted(
                    int(r[0])
                    for r in db.execute(hour_sql, [day * hours_per_day, (day + 1) * hours_per_day, *vals])
                )
                merged: list[list[int]] = []
                for h in hours:  # consecutive hours become one range
                    if merged and merged[-1][1] == h * US_PER_HOUR:
                        merged[-1][1] = (h + 1) * US_PER_HOUR
                    else:
                        merged.append([h * US_PER_HOUR, (h + 1) * US_PER_HOUR])
                for a, b in reversed(merged) if newest_first else merged:
                    a = a if lo is None else max(a, lo)
                    b = b if hi is None else min(b, hi)
                    if a < b:
                        yield a, b

        return ranges()

    def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> list[UsageEvent]:
        if limit is not None and limit < 0:
            raise ValidationError("limit", "must not be negative")
        where, params = self._where(since, until, filters)
        order = "DESC" if newest_first else "ASC"
        cols = ", ".join(EVENT_COLUMNS)
        with self._read() as db:
            ranges = self._hour_ranges(db, since, until, filters, newest_first)
            if ranges is None:
                sql = f"SELECT {cols} FROM events{where} ORDER BY ts_us {order}, id {order}"
                if limit is not None:
                    sql += " LIMIT ?"
                    params.append(int(limit))
                return [row_to_event(r) for r in db.execute(sql, params)]
            fwhere, fparams = self._where(None, None, filters)
            sql = f"SELECT {cols} FROM events{fwhere} AND ts_us >= ? AND ts_us < ? ORDER BY ts_us {order}, id {order}"
            out: list[UsageEvent] = []
            for a, b in ranges:
                if limit is None:
                    rows = db.execute(sql, [*fparams, a, b])
                elif len(out) < limit:
                    rows = db.execute(sql + " LIMIT ?", [*fparams, a, b, int(limit) - len(out)])
                else:
                    break
                out.extend(row_to_event(r) for r in rows)
            return out

    def recorded_elsewhere(self, since: datetime, limit: int = 5000) -> list[UsageEvent]:
        """One read of the partial index `events_not_proxy_ts`, whatever the proxy's traffic."""
        cols = ", ".join(EVENT_COLUMNS)
        sql = (
            f"SELECT {cols} FROM events WHERE source <> 'proxy' AND ts_us >= ? "
            "ORDER BY ts_us DESC, id DESC LIMIT ?"
        )
        with self._read() as db:
            return [row_to_event(r) for r in db.execute(sql, [to_us(since), int(limit)])]

    def iter_events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
        batch: int = 5000,
    ) -> Iterator[UsageEvent]:
        with self._read() as db:
            ranges = self._hour_ranges(db, since, until, filters, False)
            spans = None if ranges is None else list(ranges)
        if spans is None:
            yield from self._iter_range(since, until, filters, batch)
            return
        for a, b in spans:
            yield from self._iter_range(from_us(a), from_us(b), filters, batch)

    def _iter_range(
        self, since: datetime | None, until: datetime | None, filters: dict[str, str] | None, batch: int
    ) -> Iterator[UsageEvent]:
        where, params = self._where(since, until, filters)
        cols = ", ".join(EVENT_COLUMNS)
        last: tuple[int, str] | None = None
        while True:
            if last is None:
                sql, p = f"SELECT {cols} FROM events{where} ORDER BY ts_us, id LIMIT ?", [*params, batch]
            else:
                joiner = " AND " if where else " WHERE "
                sql = (
                    f"SELECT {cols} FROM events{where}{joiner}(ts_us > ? OR (ts_us = ? AND id > ?)) "
                    "ORDER BY ts_us, id LIMIT ?"
                )
                p = [*params, last[0], last[0], last[1], batch]
            with self._read() as db:
                rows = db.execute(sql, p)
            for r in rows:
                yield row_to_event(r)
            if len(rows) < batch:
                return
            last = (int(rows[-1][1]), rows[-1][0])

    def count(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: dict[str, str] | None = None,
    ) -> int:
        where, params = self._where(since, until, filters)
        with self._read() as db:
            ranges = self._hour_ranges(db, since, until, filters, False)
            if ranges is None:
                return int(db.execute(f"SELECT COUNT(*) FROM events{where}", params)[0][0])
            fwhere, fparams = self._where(None, None, filters)
            sql = f"SELECT COUNT(*) FROM events{fwhere} AND ts_us >= ? AND ts_us < ?"
            return sum(int(db.execute(sql, [*fparams, a, b])[0][0]) for a, b in ranges)

    def costs(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        by: str | None = None,
        tz: ZoneInfo | None = None,
        filters: dict[str, str] | None = None,
    ) -> list[CostRow]:
        tz = tz or ZoneInfo("UTC")
        by = by.replace("-", "_") if by else None
        if by is not None and by not in DIMENSIONS and by not in TIME_BUCKETS:
            raise ValidationError(
                "by", f"cannot group by {by!r}; one of {', '.join((*DIMENSIONS, *TIME_BUCKETS))}"
            )
        filters = {_check_filter(k): v for k, v in (filters or {}).items()}
        unit = by if by in TIME_BUCKETS else None
        dim = by if by in DIMENSIONS else None
        use_rollups = (dim is None or dim in ROLLUP_FIELDS) and all(
            k in ROLLUP_FIELDS and v is not None for k, v in filters.items()
        )
        with self._read() as db:
            # The range is cut to the hours that hold events (two index look-ups): a report from
            # 0001-01-03 would otherwise plan, and query, hundreds of thousands of empty days.
            lo, hi = db.execute("SELECT (SELECT MIN(ts_us) FROM events), (SELECT MAX(ts_us) FROM events)")[0]
            if lo is None:
                return []
            first, last = int(lo) // US_PER_HOUR * US_PER_HOUR, (int(hi) // US_PER_HOUR + 1) * US_PER_HOUR
            start = max(to_us(since), first) if since is not None else first
            end = min(to_us(until), last) if until is not None else last
            if end <= start:
                return []
            p = plan(start, end, unit, tz, use_rollups=use_rollups)
            totals: dict[tuple[int, Any], list[int]] = {}
            self._costs_rollup(db, p, "rollup_hourly", "hour", p.hours, dim, filters, totals, p.piece_of_hour)
            self._costs_rollup(db, p, "rollup_daily", "day", p.days, dim, filters, totals, p.piece_of_day)
            self._costs_raw(db, p, dim, filters, totals)
        rows: dict[Any, CostRow] = {}
        for (piece, k), sums in totals.items():
            key = p.pieces[piece][2] if unit else (k if k != "" else None)
            row = rows.get(key)
            if row is None:
                row = rows[key] = CostRow(key=key)
            row.calls += int(sums[0])
            row.input_tokens += int(sums[1])
            row.cached_input_tokens += int(sums[2])
            row.cache_write_tokens += int(sums[3])
            row.output_tokens += int(sums[4])
            row.reasoning_tokens += int(sums[5])
            row.cost_nano += int(sums[6])
            row.unpriced_calls += int(sums[7])
        out = [r for r in rows.values() if r.calls]
        if unit:
            out.sort(key=lambda r: r.key or "")
        else:
            out.sort(key=lambda r: (-r.cost_nano, -r.calls, r.key is None, r.key or ""))
        return out

    def _costs_rollup(
        self,
        db: DB,
        p: Plan,
        table: str,
        bucket: str,
        ranges: list[tuple[int, int, int]],
        dim: str | None,
        filters: dict[str, str],
        totals: dict[tuple[int, Any], list[int]],
        piece_of: Any,
    ) -> None:
        if not ranges:
            return
        merged = merge_ranges(ranges)
        conds = " OR ".join(f"({bucket} >= ? AND {bucket} < ?)" for _ in merged)
        params: list[Any] = [x for r in merged for x in r]
        where = f"({conds})"
        for k, v in filters.items():
            where += f" AND {column(k)} = ?"
            params.append(v)
        if dim is None:  # time buckets: per hour/day, mapped to pieces here
            sql = f"SELECT {bucket}, {_ROLLUP_SUMS_SQL} FROM {table} WHERE {where} GROUP BY {bucket}"
            for r in db.execute(sql, params):
                _add(totals, (piece_of(int(r[0])), None), r[1:])
        else:  # one piece: group by the dimension only
            sql = (
                f"SELECT {column(dim)}, {_ROLLUP_SUMS_SQL} FROM {table} WHERE {where} GROUP BY {column(dim)}"
            )
            for r in db.execute(sql, params):
                _add(totals, (0, r[0]), r[1:])

    def _costs_raw(
        self,
        db: DB,
        p: Plan,
        dim: str | None,
        filters: dict[str, str],
        totals: dict[tuple[int, Any], list[int]],
    ) -> None:
        extra = ""
        fparams: list[Any] = []
        for k, v in filters.items():
            if v is None:
                extra += f" AND {column(k)} IS NULL"
            else:
                extra += f" AND {column(k)} = ?"
                fparams.append(v)
        key_sql = column(dim) if dim else "NULL"
        group = f" GROUP BY {column(dim)}" if dim else ""
        for i in range(0, len(p.raw), 100):
            parts: list[str] = []
            params: list[Any] = []
            for a, b, piece in p.raw[i : i + 100]:
                parts.append(
                    f"SELECT {int(piece)}, {key_sql}, {_RAW_SUMS_SQL} FROM events "
                    f"WHERE ts_us >= ? AND ts_us < ?{extra}{group}"
                )
                params += [a, b, *fparams]
            for r in db.execute(" UNION ALL ".join(parts), params):
                if r[2]:
                    _add(totals, (int(r[0]), r[1]), r[2:])

    def sessions(self, *, limit: int = 30, since: datetime | None = None) -> list[SessionRow]:
        sql = (
            "SELECT session, first_us, last_us, calls, input_tokens, output_tokens, cost_nano, unpriced_calls "
            "FROM sessions"
        )
        params: list[Any] = []
        if since is not None:
            sql += " WHERE last_us >= ?"
            params.append(to_us(since))
        sql += " ORDER BY last_us DESC, session LIMIT ?"
        params.append(int(limit))
        with self._read() as db:
            rows = db.execute(sql, params)
            agents: dict[str, list[str]] = {}
            names = [r[0] for r in rows]
            for i in range(0, len(names), _CHUNK):
                chunk = names[i : i + _CHUNK]
                for s, a in db.execute(
                    f"SELECT session, agent FROM session_agents WHERE session IN "
                    f"({', '.join('?' * len(chunk))}) ORDER BY session, agent",
                    chunk,
                ):
                    agents.setdefault(s, []).append(a)
        return [
            SessionRow(
                session=r[0],
                start=from_us(int(r[1])),
                end=from_us(int(r[2])),
                calls=int(r[3]),
                input_tokens=int(r[4]),
                output_tokens=int(r[5]),
                cost_nano=int(r[6]),
                unpriced_calls=int(r[7]),
                agents=agents.get(r[0], []),
            )
            for r in rows
        ]

    def unpriced_models(self) -> list[UnpricedModel]:
        sql = (
            "SELECT provider, model, COUNT(*), SUM(input_tokens), SUM(output_tokens), MIN(ts_us), MAX(ts_us) "
            "FROM events WHERE cost_nano IS NULL GROUP BY provider, model"
        )
        with self._read() as db:
            rows = db.execute(sql)
        out = [
            UnpricedModel(
                provider=r[0],
                model=r[1],
                calls=int(r[2]),
                input_tokens=int(r[3]),
                output_tokens=int(r[4]),
                first_seen=from_us(int(r[5])),
                last_seen=from_us(int(r[6])),
            )
            for r in rows
        ]
        out.sort(key=lambda m: (-m.calls, m.provider, m.model))
        return out

    # ------------------------------------------------------------------ quota readings
    def record_reading(self, reading: dict[str, Any]) -> None:
        for key in ("timestamp", "backend", "source"):
            if not reading.get(key):
                raise ValidationError(key, "is required in a quota reading")
        ts = to_us(parse_timestamp(reading["timestamp"]))
        payload = json.dumps(reading, default=str, sort_keys=True)
        with self._tx() as db:
            db.execute(
                "INSERT INTO quota_readings (ts_us, backend, source, payload) VALUES (?, ?, ?, ?)",
                (ts, str(reading["backend"]), str(reading["source"]), payload),
            )

    def readings(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        backend: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        conds, params = _time_range(since, until)
        if backend is not None:
            conds.append("backend = ?")
            params.append(backend)
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        if limit is not None:  # the newest `limit`, returned oldest first
            sql = (
                f"SELECT payload FROM (SELECT payload, ts_us, id FROM quota_readings{where} "
                "ORDER BY ts_us DESC, id DESC LIMIT ?) AS t ORDER BY ts_us, id"
            )
            params.append(int(limit))
        else:
            sql = f"SELECT payload FROM quota_readings{where} ORDER BY ts_us, id"
        with self._read() as db:
            return [json.loads(r[0]) for r in db.execute(sql, params)]

    def latest_readings(self) -> dict[str, dict[str, Any]]:
        sql = (
            "SELECT q.backend, q.payload FROM quota_readings q JOIN (SELECT backend, MAX(id) AS id FROM "
            "quota_readings q2 WHERE ts_us = (SELECT MAX(ts_us) FROM quota_readings q3 WHERE q3.backend = q2.backend) "
            "GROUP BY backend) m ON q.id = m.id"
        )
        with self._read() as db:
            return {r[0]: json.loads(r[1]) for r in db.execute(sql)}

    def prune_readings(self, before: datetime, *, dry_run: bool = False) -> int:
        cutoff = to_us(before)
        if dry_run:
            with self._read() as db:
                return int(db.execute("SELECT COUNT(*) FROM quota_readings WHERE ts_us < ?", (cutoff,))[0][0])
        with self._tx() as db:
            n = int(db.execute("SELECT COUNT(*) FROM quota_readings WHERE ts_us < ?", (cutoff,))[0][0])
            db.execute("DELETE FROM quota_readings WHERE ts_us < ?", (cutoff,))
        return n

    # ------------------------------------------------------------------ state
    def get_state(self, namespace: str, key: str) -> dict[str, Any] | None:
        with self._read() as db:
            rows = db.execute("SELECT value FROM state WHERE namespace = ? AND key = ?", (namespace, key))
        return json.loads(rows[0][0]) if rows else None

    def set_state(self, namespace: str, key: str, value: dict[str, Any] | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM state WHERE namespace = ? AND key = ?", (namespace, key))
            else:
                db.execute(
                    "INSERT INTO state (namespace, key, value, updated_us) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
                    "updated_us = excluded.updated_us",
                    (namespace, key, json.dumps(value, default=str, sort_keys=True), time.time_ns() // 1000),
                )

    def list_state(self, namespace: str) -> dict[str, dict[str, Any]]:
        with self._read() as db:
            rows = db.execute("SELECT key, value FROM state WHERE namespace = ? ORDER BY key", (namespace,))
        return {r[0]: json.loads(r[1]) for r in rows}

    # ------------------------------------------------------------------ helpers
    def _masked(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._masked()}>"


def _check_filter(name: str) -> str:
    name = name.replace("-", "_")
    if name not in FILTER_FIELDS:
        raise ValidationError(name, f"cannot filter on {name!r}; one of {', '.join(FILTER_FIELDS)}")
    return name


def _add(totals: dict[tuple[int, Any], list[int]], key: tuple[int, Any], sums: Sequence[Any]) -> None:
    acc = totals.get(key)
    vals = [int(v or 0) for v in sums]
    if acc is None:
        totals[key] = vals
    else:
        for i, v in enumerate(vals):
            acc[i] += v


def _time_range(since: datetime | None, until: datetime | None) -> tuple[list[str], list[Any]]:
    """SQL conditions and parameters for `since <= ts < until` on a `ts_us` column (either end open)."""
    conds: list[str] = []
    params: list[Any] = []
    if since is not None:
        conds.append("ts_us >= ?")
        params.append(to_us(since))
    if until is not None:
        conds.append("ts_us < ?")
        params.append(to_us(until))
    return conds, params
