"""The background writer's two files: the spool (events waiting out a database outage) and the quarantine.

The spool is JSONL, fsynced and guarded by `flock` so several processes can share it; a ledger
replays it through its idempotent commit. The quarantine holds events the database refused on
their data, each with when and why. `llmbudget/store/writer.py` decides what goes where.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..events import UsageEvent
from .jsonl import OnError, event_line, iter_jsonl, log_only, read_events

# the writer's files log under the writer's name, as they always have
log = logging.getLogger("llmbudget.store.writer")

#: one transaction of events (the ledger's commit); returns the events newly stored
Commit = Callable[[list[UsageEvent]], int]


class Quarantine:
    """Events the database refused on their data, one JSON object a line: when, why, the event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids: set[str] | None = None

    def ids(self) -> set[str]:
        """Ids of the quarantined events (so a replay does not quarantine one twice)."""
        if self._ids is None:
            self._ids = set()
            for q in self.entries():
                ev = q.get("event")
                if isinstance(ev, dict) and isinstance(ev.get("id"), str):
                    self._ids.add(ev["id"])
        return self._ids

    def add(self, event: UsageEvent | dict[str, Any] | str, reason: str) -> None:
        """Append one refused event (an event, its dict, or the raw line it came from) with the reason."""
        if isinstance(event, UsageEvent):
            body = event_line(event)
        elif isinstance(event, dict):
            body = json.dumps(event, default=str, ensure_ascii=False)
        else:
            body = json.dumps(event, ensure_ascii=False)
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = (
            f'{{"quarantined_at":"{at}","reason":{json.dumps(reason, ensure_ascii=False)},"event":{body}}}\n'
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8", "backslashreplace"))
        finally:
            os.close(fd)
        ev_id = (
            event.id
            if isinstance(event, UsageEvent)
            else (event.get("id") if isinstance(event, dict) else None)
        )
        if self._ids is not None and isinstance(ev_id, str):
            self._ids.add(ev_id)
        log.error("ledger_event_quarantined id=%s reason=%s file=%s", ev_id, reason, self.path)

    def entries(self) -> list[dict[str, Any]]:
        """Every quarantined entry, oldest first (a damaged line is skipped with a log line)."""
        if not self.path.exists():
            return []
        return [obj for _, obj in iter_jsonl(self.path, on_error=log_only)]


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

    def replay(self, commit: Commit, batch_size: int, on_error: OnError | None = None) -> int:
        """Commit every spooled event (idempotent), then empty the spool; returns events newly stored.

        A line that is not a valid event goes to `on_error` (the writer quarantines it).
        """
        if not self.pending():
            return 0
        added = 0
        with open(self.path, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                batch: list[UsageEvent] = []
                for ev in read_events(self.path, on_error=on_error or log_only):
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
