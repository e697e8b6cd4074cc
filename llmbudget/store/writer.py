"""The background writer behind `Ledger.record()`: an in-memory queue flushed in batches, and a disk spool.

`submit()` appends to a deque under a lock and returns; a daemon thread takes up to `batch_size`
events whenever that many are waiting or `flush_interval_s` has passed, and hands them to the
ledger's `commit` (one transaction: events, rollups, sessions; then the audit log).

When the commit fails (database down, disk locked) the batch is appended to the spool file
(JSONL, fsynced, guarded by `flock` so several processes can share it) and counted as durable.
While the database is failing, further batches go straight to the spool; every `retry` seconds
(backing off to 30 s) the writer replays the spool through the same idempotent commit and
truncates it once everything is in. A spool left by a process that died during an outage is
replayed by the next ledger opened on the same database. If even the spool cannot be written,
the batch stays in memory and is retried: an accepted event is never dropped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..events import UsageEvent
from .jsonl import event_line, log_only, read_events

log = logging.getLogger(__name__)

Commit = Callable[[list[UsageEvent]], int]


class Spool:
    """Events waiting for the database, as JSONL on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, events: list[UsageEvent]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(event_line(e) + "\n" for e in events).encode()
        with open(self.path, "ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def replay(self, commit: Commit, batch_size: int) -> int:
        """Commit every spooled event (idempotent), then empty the spool; returns events newly stored."""
        if not self.pending():
            return 0
        added = 0
        with open(self.path, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                batch: list[UsageEvent] = []
                for ev in read_events(self.path, on_error=log_only):
                    batch.append(ev)
                    if len(batch) >= batch_size:
                        added += commit(batch)
                        batch = []
                if batch:
                    added += commit(batch)
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        log.info("spool_replayed path=%s added=%d", self.path, added)
        return added


class BatchWriter:
    """Queue + daemon thread; `flush()` waits until every submitted event is committed or spooled."""

    def __init__(
        self,
        commit: Commit,
        *,
        batch_size: int,
        flush_interval_s: float,
        spool: Spool,
        name: str = "llmbudget-ledger-writer",
    ) -> None:
        self._commit = commit
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.spool = spool
        self._name = name
        # re-entrant: a signal handler may flush while the main thread is inside submit()
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[UsageEvent] = deque()
        self._accepted = 0
        self._done = 0
        self._waiters = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False
        self._backoff = 0.5
        self._next_retry = 0.0 if spool.pending() else float("inf")
        #: CPU seconds the writer thread spent writing batches, and the events in them (see `stats`)
        self.cpu_s = 0.0
        self.written = 0
        self.batches = 0

    # ------------------------------------------------------------------ producer side
    def submit(self, event: UsageEvent) -> None:
        with self._cond:
            self._queue.append(event)
            self._accepted += 1
            if self._thread is None:
                self._start()
            if len(self._queue) >= self.batch_size:
                self._cond.notify_all()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Block until every event submitted before this call is in the database or the spool."""
        with self._cond:
            target = self._accepted
            if self._done >= target:
                return
            self._waiters += 1
            self._cond.notify_all()
            try:
                while self._done < target:
                    if self._thread is None or not self._thread.is_alive():
                        self._drain_inline()
                        break
                    self._cond.wait(timeout=0.5)
            finally:
                self._waiters -= 1

    def close(self) -> None:
        """Flush, stop the thread, and try once more to replay a pending spool."""
        self.flush()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        if self.spool.pending():
            self._try_replay()

    def stats(self) -> dict[str, float]:
        """The writer thread's CPU cost: batches, events and CPU seconds spent writing them."""
        per = self.cpu_s / self.written * 1e6 if self.written else 0.0
        return {
            "batches": self.batches,
            "events": self.written,
            "cpu_s": round(self.cpu_s, 4),
            "cpu_us_per_event": round(per, 2),
        }

    def _drain_inline(self) -> None:
        # the thread is gone (interpreter shutting down): write what is left from this thread
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._write(batch)
            self._done += len(batch)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    timeout = max(0.0, self._next_retry - time.monotonic())
                    if timeout == 0.0:
                        break
                    self._cond.wait(timeout=min(timeout, 3600.0))
                if self._stopping and not self._queue:
                    return
                if 0 < len(self._queue) < self.batch_size and not self._waiters and not self._stopping:
                    # let a burst fill the batch; submit() and flush() wake us early
                    self._cond.wait(timeout=self.flush_interval_s)
                n = min(self.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
            if time.monotonic() >= self._next_retry:
                self._try_replay()
            if batch:
                cpu0 = time.thread_time()
                ok = self._write(batch)
                self.cpu_s += time.thread_time() - cpu0
                self.batches += 1
                self.written += len(batch)
                with self._cond:
                    if ok:
                        self._done += len(batch)
                    else:  # neither database nor spool took it: keep it, retry later
                        self._queue.extendleft(reversed(batch))
                    self._cond.notify_all()
                if not ok:
                    time.sleep(min(self._backoff, 5.0))

    def _write(self, batch: list[UsageEvent]) -> bool:
        if not self._failing:
            try:
                self._commit(batch)
                return True
            except Exception as e:
                self._failing = True
                self._next_retry = time.monotonic() + self._backoff
                log.warning(
                    "ledger_write_failed events=%d error=%s spool=%s",
                    len(batch),
                    _one_line(e),
                    self.spool.path,
                )
        try:
            self.spool.append(batch)
            return True
        except OSError as e:
            log.error("ledger_spool_failed events=%d error=%s", len(batch), _one_line(e))
            return False

    def _try_replay(self) -> None:
        try:
            self.spool.replay(self._commit, self.batch_size)
        except Exception as e:
            self._backoff = min(self._backoff * 2, 30.0)
            self._next_retry = time.monotonic() + self._backoff
            log.warning("ledger_spool_replay_failed error=%s retry_in_s=%.1f", _one_line(e), self._backoff)
            return
        self._failing = False
        self._backoff = 0.5
        self._next_retry = float("inf")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
