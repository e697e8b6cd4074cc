"""The background writer behind `Ledger.record()`: an in-memory queue flushed in batches, and a disk spool.

`submit()` appends to a deque under a lock and returns. The first event of a batch wakes the daemon
thread, which writes whatever is queued once `batch_size` events are waiting or `flush_interval_s`
after that first event arrived, whichever comes first: an accepted event is in the database within
`flush_interval_s` (plus the time of the batch before it) at any traffic level, and the thread
sleeps while nothing is queued. Each batch goes to the ledger's `commit` (one transaction: events,
rollups, sessions).

A batch that fails on its data (a value the database cannot hold) is split in halves until the
events at fault are alone; each goes to the quarantine file with its reason and the rest are
written. Only a failure to reach the database (`is_outage`) sends a batch to the spool file
(JSONL, fsynced, guarded by `flock` so several processes can share it), counted as durable.
While the database is failing, further batches go straight to the spool; every `retry` seconds
(backing off to 30 s) the writer replays the spool through the same idempotent commit and
truncates it once everything is in. A spool left by a process that died during an outage is
replayed by the next ledger opened on the same database. If even the spool cannot be written,
the batch stays in memory and is retried: an accepted event is never dropped. The spool and the
quarantine files are `llmbudget/store/spool.py`'s.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..events import UsageEvent
from .spool import Commit, Quarantine, Spool

log = logging.getLogger(__name__)

#: is this commit failure the database being unreachable (spool and retry), not bad data (split)?
IsOutage = Callable[[BaseException], bool]


def _outage_by_default(e: BaseException) -> bool:
    return isinstance(e, OSError)


class BatchWriter:
    """Queue + daemon thread; `flush()` waits until every submitted event is committed, quarantined or spooled."""

    def __init__(
        self,
        commit: Commit,
        *,
        batch_size: int,
        flush_interval_s: float,
        spool: Spool,
        quarantine: Quarantine | None = None,
        is_outage: IsOutage = _outage_by_default,
        probe: Callable[[], bool] | None = None,
        name: str = "llmbudget-ledger-writer",
    ) -> None:
        self._commit = commit
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.spool = spool
        self.quarantine = quarantine
        self._is_outage = is_outage
        #: a quick reachability check before retrying after an outage (None: just retry)
        self._probe = probe
        self._name = name
        # re-entrant: a signal handler may flush while the main thread is inside submit()
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[UsageEvent] = deque()
        #: when the oldest queued event arrived (monotonic): the batch is due flush_interval_s later
        self._first_at = 0.0
        self._accepted = 0
        self._done = 0
        self._waiters = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False
        self._backoff = 0.5
        self._next_retry = 0.0 if spool.pending() else float("inf")
        #: background work run by the writer thread every `periodic_s` (the audit checkpoint)
        self.periodic: Callable[[], None] | None = None
        self.periodic_s = 30.0
        self._next_periodic = time.monotonic() + self.periodic_s
        #: CPU seconds the writer thread spent writing batches, and the events in them (see `stats`)
        self.cpu_s = 0.0
        self.written = 0
        self.batches = 0
        self.quarantined = 0

    # ------------------------------------------------------------------ producer side
    def submit(self, event: UsageEvent) -> None:
        with self._cond:
            queue = self._queue
            if not queue:
                # the first event of a batch: the thread wakes now and writes by flush_interval_s
                self._first_at = time.monotonic()
                queue.append(event)
                self._accepted += 1
                if self._thread is None:
                    self._start()
                self._cond.notify()
                return
            queue.append(event)
            self._accepted += 1
            if len(queue) == self.batch_size:
                self._cond.notify()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Block until every event submitted before this call is in the database, quarantine or spool."""
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
            "quarantined": self.quarantined,
        }

    @property
    def accepted(self) -> int:
        """Events submitted so far."""
        return self._accepted

    @property
    def done(self) -> int:
        """Events submitted so far that are in the database, the quarantine or the spool."""
        return self._done

    def quarantine_raw(self, text: str, reason: str) -> None:
        """Quarantine a line that is not a valid event (e.g. from the audit log), with the reason."""
        if self.quarantine is None:
            log.error("ledger_event_refused reason=%s", reason)
            return
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        self.quarantine.add(obj if isinstance(obj, dict) else text, reason)
        self.quarantined += 1

    def quarantine_line(self, path: Path, lineno: int, why: str) -> None:
        """An `on_error` for spool replay: a line that is not a valid event is quarantined, not dropped."""
        self.quarantine_raw(_line_at(path, lineno), f"{path}:{lineno}: {why}")

    def _drain_inline(self) -> None:
        # the thread is gone (interpreter shutting down): write what is left from this thread
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._write(batch)
            self._done += len(batch)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        cond, queue = self._cond, self._queue
        while True:
            with cond:
                while not queue and not self._stopping:
                    now = time.monotonic()
                    timeout = min(self._next_retry, self._next_periodic) - now
                    if timeout <= 0.0:
                        break
                    cond.wait(timeout=timeout)
                if self._stopping and not queue:
                    return
                # let a burst fill the batch, but never hold the oldest event past its due time
                while 0 < len(queue) < self.batch_size and not self._waiters and not self._stopping:
                    left = self._first_at + self.flush_interval_s - time.monotonic()
                    if left <= 0.0:
                        break
                    cond.wait(timeout=left)
                n = min(self.batch_size, len(queue))
                batch = [queue.popleft() for _ in range(n)]
                if queue:  # what stays behind is due one interval from now
                    self._first_at = time.monotonic()
            now = time.monotonic()
            if now >= self._next_retry:
                self._try_replay()
            if batch:
                cpu0 = time.thread_time()
                ok = self._write(batch)
                self.cpu_s += time.thread_time() - cpu0
                self.batches += 1
                self.written += len(batch)
                with cond:
                    if ok:
                        self._done += len(batch)
                    else:  # neither database nor spool took it: keep it, retry later
                        queue.extendleft(reversed(batch))
                        self._first_at = time.monotonic()
                    cond.notify_all()
                if not ok:
                    time.sleep(min(self._backoff, 5.0))
            if self.periodic is not None and time.monotonic() >= self._next_periodic:
                self._next_periodic = time.monotonic() + self.periodic_s
                if not self._failing:
                    try:
                        self.periodic()
                    except Exception as e:
                        log.warning("ledger_periodic_failed error=%s", _one_line(e))

    def commit_or_split(self, batch: list[UsageEvent], commit: Commit | None = None) -> int:
        """Commit `batch`; on a data error split it until each bad event is alone and quarantine those.

        Returns events newly stored. A failure to reach the database is raised (as `_Outage`,
        carrying the events not committed yet) so the caller can spool them.
        """
        commit = commit or self._commit
        added = 0
        pending = [batch]
        while pending:
            part = pending.pop()
            try:
                added += commit(part)
            except Exception as e:
                if self._is_outage(e):
                    left = [ev for p in pending for ev in p]
                    raise _Outage(part + left, e) from e
                if len(part) == 1 or self.quarantine is None:
                    if self.quarantine is None:
                        raise
                    self.quarantine.add(part[0], f"the database refused it: {_one_line(e)}")
                    self.quarantined += 1
                    continue
                mid = len(part) // 2
                pending.append(part[mid:])
                pending.append(part[:mid])
        return added

    def _write(self, batch: list[UsageEvent]) -> bool:
        if not self._failing:
            try:
                self.commit_or_split(batch)
                return True
            except _Outage as o:
                batch = o.events
                self._failing = True
                self._next_retry = time.monotonic() + self._backoff
                log.warning(
                    "ledger_write_failed events=%d error=%s spool=%s",
                    len(batch),
                    _one_line(o.error),
                    self.spool.path,
                )
            except Exception as e:  # a data error with no quarantine to put it in
                log.error("ledger_write_refused events=%d error=%s", len(batch), _one_line(e))
        try:
            self.spool.append(batch)
            return True
        except OSError as e:
            log.error("ledger_spool_failed events=%d error=%s", len(batch), _one_line(e))
            return False

    def _try_replay(self) -> None:
        if self._probe is not None and self._failing:
            try:
                up = self._probe()
            except Exception:
                up = False
            if not up:  # still down: a cheap check instead of a pool timeout per retry
                self._backoff = min(self._backoff * 2, 30.0)
                self._next_retry = time.monotonic() + self._backoff
                return
        try:
            self.spool.replay(self.commit_or_split, self.batch_size, self.quarantine_line)
        except Exception as e:
            error = e.error if isinstance(e, _Outage) else e
            self._backoff = min(self._backoff * 2, 30.0)
            self._next_retry = time.monotonic() + self._backoff
            log.warning(
                "ledger_spool_replay_failed error=%s retry_in_s=%.1f", _one_line(error), self._backoff
            )
            return
        self._failing = False
        self._backoff = 0.5
        self._next_retry = float("inf")


class _Outage(Exception):
    """The database could not be reached; `events` were not committed."""

    def __init__(self, events: list[UsageEvent], error: BaseException) -> None:
        super().__init__(str(error))
        self.events = events
        self.error = error


def _line_at(path: Path, lineno: int) -> str:
    try:
        with open(path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                if i == lineno:
                    return raw.decode("utf-8", "replace").rstrip("\r\n")
    except OSError:
        pass
    return ""


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
