"""Append-only JSONL files: the audit log of every accepted event and the outage spool.

The audit log holds one `UsageEvent.to_dict()` per line (plus a `ledger` tag naming the database),
written when the event is accepted, before it is queued for the database: it is the write-ahead
record that the ledger replays at start-up (see `SQLLedger.replay_audit`). Readers never stop at a damaged line: it is reported (file and line number)
with a warning and skipped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import LLMBudgetError
from ..events import UsageEvent
from ..money import decimal_str

log = logging.getLogger(__name__)


class CorruptLineWarning(UserWarning):
    """A JSONL line that cannot be read; the message names the file and line."""


_esc = json.encoder.encode_basestring  # the C implementation when available
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _num(v: float | int | None) -> str:
    if v is None:
        return "null"
    if type(v) is int or (type(v) is float and v - v == 0):  # finite: repr is what json writes
        return repr(v)
    return _compact.encode(v)


def _n(v: str | None) -> str:
    return "null" if v is None else _esc(v)


#: JSON text of the low-cardinality fields, keyed by their values: most events of a batch share it
_attr_cache: dict[tuple[Any, ...], str] = {}


def event_line(ev: UsageEvent) -> str:
    """`json.dumps(ev.to_dict())`, compact, about five times faster (the audit log is on the write path).

    The attribution fields repeat from event to event, so their JSON text is cached by value;
    per event only the id, time, tokens, cost, session, task and timings are formatted.
    """
    key = (
        ev.backend,
        ev.model,
        ev.provider,
        ev.request_model,
        ev.price_status,
        ev.agent,
        ev.user,
        ev.team,
        ev.task_type,
        ev.tier,
        ev.status,
        ev.source,
        ev.key,
    )
    attrs = _attr_cache.get(key)
    if attrs is None:
        if len(_attr_cache) >= 4096:
            _attr_cache.clear()
        attrs = _attr_cache[key] = (
            f'"backend":{_esc(key[0])},"model":{_esc(key[1])},"provider":{_esc(key[2])},'
            f'"request_model":{_n(key[3])},"price_status":{_esc(key[4])},"agent":{_n(key[5])},'
            f'"user":{_n(key[6])},"team":{_n(key[7])},"task_type":{_n(key[8])},"tier":{_n(key[9])},'
            f'"status":{_esc(key[10])},"source":{_esc(key[11])},"key":{_n(key[12])}'
        )
    ts = ev.timestamp.isoformat()
    if ts.endswith("+00:00"):
        ts = ts[:-6] + "Z"
    h, d, t = ev.http_status, ev.duration_ms, ev.ttft_ms
    return (
        f'{{"id":{_esc(ev.id)},"timestamp":"{ts}",{attrs},'
        f'"input_tokens":{ev.input_tokens:d},"cached_input_tokens":{ev.cached_input_tokens:d},'
        f'"cache_write_tokens":{ev.cache_write_tokens:d},"output_tokens":{ev.output_tokens:d},'
        f'"reasoning_tokens":{ev.reasoning_tokens:d},'
        f'"cost_usd":{"null" if ev.cost_usd is None else _esc(decimal_str(ev.cost_usd))},'
        f'"session":{"null" if ev.session is None else _esc(ev.session)},'
        f'"task_id":{"null" if ev.task_id is None else _esc(ev.task_id)},'
        f'"tags":{_compact.encode(ev.tags) if ev.tags else "{}"},'
        f'"http_status":{"null" if h is None else (repr(h) if type(h) is int else _num(h))},'
        f'"streamed":{"true" if ev.streamed else "false"},'
        f'"duration_ms":{"null" if d is None else (repr(d) if type(d) is float and d - d == 0 else _num(d))},'
        f'"ttft_ms":{"null" if t is None else (repr(t) if type(t) is float and t - t == 0 else _num(t))},'
        f'"cache_write_1h_tokens":{ev.cache_write_1h_tokens:d},'
        f'"service_tier":{"null" if ev.service_tier is None else _esc(ev.service_tier)},'
        f'"units":{_compact.encode(ev.units) if ev.units else "{}"},'
        f'"reason":{"null" if ev.reason is None else _esc(ev.reason)}}}'
    )


class AuditLog:
    """The write-ahead record: one event line per accepted event, each written with one `write`.

    The file is opened `O_APPEND`, so lines from several threads and processes never interleave.
    `ledger` tags every line (`"ledger":"<id>"` as its last key) with the database it belongs to,
    so that the start-up replay of a shared file only takes its own ledger's lines. With `fsync`,
    a background thread group-commits: one `fsync` covers every line written before it started;
    `wait_synced()` / `synced_future()` wait for the one covering the caller's line.

    If the file is moved or deleted (log rotation), the next write after a second notices the path
    no longer names the open file and reopens it.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool = False, ledger: str | None = None
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._tail = "}\n" if ledger is None else f',"ledger":{_esc(ledger)}}}\n'
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._checked = 0.0
        self._written = 0
        self._synced = 0
        self._sync_cond = threading.Condition(self._lock)
        self._futures: list[tuple[int, concurrent.futures.Future[None]]] = []
        self._syncer: threading.Thread | None = None
        self._closing = False
        #: how often a write checks that the path still names the open file (seconds)
        self.reopen_check_s = 1.0

    def _open(self) -> int:
        fd = self._fd
        now = time.monotonic()
        if fd is not None:
            if now - self._checked < self.reopen_check_s:
                return fd
            self._checked = now
            try:
                st = os.stat(self.path)
                fst = os.fstat(fd)
                if (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev):
                    return fd
            except OSError:  # deleted: reopen below (creates it again)
                pass
            with contextlib.suppress(OSError):
                os.close(fd)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._checked = now
        return fd

    def line(self, ev: UsageEvent) -> str:
        """The event's line as written here (with the ledger tag and newline)."""
        return event_line(ev)[:-1] + self._tail

    def write_many(self, events: list[UsageEvent]) -> None:
        """Write events' lines, one each, with one `write` (no fsync here, see `wait_synced`)."""
        tail = self._tail
        self._write("".join([event_line(e)[:-1] + tail for e in events]).encode("utf-8", "backslashreplace"))

    def append(self, events: Iterable[UsageEvent]) -> int:
        """Write events, one line each, in one `write`, and wait for their fsync when configured;
        returns how many were written."""
        batch = list(events)
        if not batch:
            return 0
        self.write_many(batch)
        if self.fsync:
            self.wait_synced()
        return len(batch)

    def _write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None or time.monotonic() - self._checked >= self.reopen_check_s or self.fsync:
            with self._lock:
                fd = self._open()
                try:
                    self._write_all(fd, data)
                except OSError:
                    self._drop(fd)
                    raise
                self._written += 1
            return
        try:
            self._write_all(fd, data)
        except OSError:
            with self._lock:
                self._drop(fd)
            raise

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        n = os.write(fd, data)
        while n < len(data):  # a regular file takes it whole unless the disk is full
            data = data[n:]
            n = os.write(fd, data)

    def _drop(self, fd: int) -> None:
        if self._fd == fd:
            self._fd = None
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------------ group commit (durability: fsync)
    def _start_syncer(self) -> None:
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="llmbudget-audit-fsync", daemon=True)
            self._syncer.start()

    def _sync_loop(self) -> None:
        cond = self._sync_cond
        while True:
            with cond:
                while self._synced >= self._written and not self._closing:
                    cond.wait()
                if self._closing and self._synced >= self._written:
                    return
                target, fd = self._written, self._fd
            if fd is not None:
                try:
                    os.fsync(fd)
                except OSError as e:
                    log.error("audit_log_fsync_failed path=%s error=%s", self.path, e)
            with cond:
                self._synced = target
                done = [f for seq, f in self._futures if seq <= target]
                self._futures = [(seq, f) for seq, f in self._futures if seq > target]
                cond.notify_all()
            for f in done:
                if not f.done():
                    f.set_result(None)

    def wait_synced(self) -> None:
        """Block until every line written so far is on disk (no-op unless `fsync`)."""
        if not self.fsync:
            return
        with self._sync_cond:
            self._start_syncer()
            target = self._written
            self._sync_cond.notify_all()
            while self._synced < target and not self._closing:
                self._sync_cond.wait(timeout=1.0)

    def synced_future(self) -> concurrent.futures.Future[None] | None:
        """A future done once every line written so far is on disk; None when there is nothing to wait for."""
        if not self.fsync:
            return None
        with self._sync_cond:
            target = self._written
            if self._synced >= target:
                return None
            self._start_syncer()
            f: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._futures.append((target, f))
            self._sync_cond.notify_all()
            return f

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a log dropped without close() must not leak its descriptor
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(Exception):
                os.close(fd)

    def close(self) -> None:
        """Sync (with `fsync`), stop the syncer and close the file (a later write reopens it)."""
        if self.fsync and self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
        with self._sync_cond:
            self._closing = True
            self._synced = self._written
            futures, self._futures = self._futures, []
            self._sync_cond.notify_all()
            thread, self._syncer = self._syncer, None
        for _, f in futures:
            if not f.done():
                f.set_result(None)
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            self._closing = False
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None


#: called with (path, line number, reason) for a damaged line
OnError = Callable[[Path, int, str], None]


def iter_jsonl(
    path: str | os.PathLike[str], on_error: OnError | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every readable line; a damaged line is reported and skipped.

    By default a damaged line is logged and raised as a `CorruptLineWarning` (a warning, never an
    error); pass `on_error` to handle it yourself.
    """
    p = Path(path)
    report = on_error or _report
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                report(p, lineno, f"not valid JSON ({e})")
                continue
            if not isinstance(obj, dict):
                report(p, lineno, "not a JSON object")
                continue
            yield lineno, obj


def read_events(path: str | os.PathLike[str], on_error: OnError | None = None) -> Iterator[UsageEvent]:
    """Events from an audit log or spool file; damaged lines and invalid events are reported and skipped."""
    report = on_error or _report
    for lineno, obj in iter_jsonl(path, on_error):
        obj.pop("ledger", None)  # the audit log's tag of the database a line belongs to
        try:
            yield UsageEvent.from_dict(obj)
        except (LLMBudgetError, ValueError, TypeError) as e:
            report(Path(path), lineno, f"not a valid event ({e})")


def log_only(path: Path, lineno: int, why: str) -> None:
    """An `on_error` for background work: log the damaged line, no warning."""
    log.warning("jsonl_corrupt_line file=%s line=%d reason=%s", path, lineno, why)


def _report(path: Path, lineno: int, why: str) -> None:
    msg = f"{path}:{lineno}: skipped line: {why}"
    log.warning("jsonl_corrupt_line file=%s line=%d reason=%s", path, lineno, why)
    warnings.warn(msg, CorruptLineWarning, stacklevel=3)
