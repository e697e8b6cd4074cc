"""Append-only JSONL files: the audit log of every accepted event and the outage spool.

The audit log holds one `UsageEvent.to_dict()` per line, appended by the ledger's writer after
each batch commits (only the events the batch actually added, so the log and the database hold
the same events). Readers never stop at a damaged line: it is reported (file and line number)
with a warning and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import LLMBudgetError
from ..events import UsageEvent

log = logging.getLogger(__name__)


class CorruptLineWarning(UserWarning):
    """A JSONL line that cannot be read; the message names the file and line."""


class AuditLog:
    """A thread-safe appender of event lines; each append is flushed and fsynced."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()

    def append(self, events: Iterable[UsageEvent]) -> int:
        """Append events, one JSON object a line; returns how many were written."""
        lines = [json.dumps(e.to_dict(), separators=(",", ":"), ensure_ascii=False) for e in events]
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock, open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        return len(lines)


#: called with (path, line number, reason) for a damaged line
OnError = Callable[[Path, int, str], None]


def iter_jsonl(path: str | os.PathLike[str], on_error: OnError | None = None
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
