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


_esc = json.encoder.encode_basestring  # the C implementation when available
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _str(v: str | None) -> str:
    return "null" if v is None else _esc(v)


def _num(v: float | int | None) -> str:
    if v is None:
        return "null"
    if type(v) is int or (type(v) is float and v - v == 0):  # finite: repr is what json writes
        return repr(v)
    return _compact.encode(v)


def event_line(ev: UsageEvent) -> str:
    """`json.dumps(ev.to_dict())`, compact, about four times faster (the audit log is on the write path)."""
    ts = ev.timestamp.isoformat()
    if ts.endswith("+00:00"):
        ts = ts[:-6] + "Z"
    return (
        f'{{"backend":{_esc(ev.backend)},"model":{_esc(ev.model)},"id":{_esc(ev.id)},"timestamp":"{ts}",'
        f'"provider":{_esc(ev.provider)},"request_model":{_str(ev.request_model)},'
        f'"input_tokens":{ev.input_tokens:d},"cached_input_tokens":{ev.cached_input_tokens:d},'
        f'"cache_write_tokens":{ev.cache_write_tokens:d},"output_tokens":{ev.output_tokens:d},'
        f'"reasoning_tokens":{ev.reasoning_tokens:d},'
        f'"cost_usd":{"null" if ev.cost_usd is None else _esc(str(ev.cost_usd))},'
        f'"price_status":{_esc(ev.price_status)},"agent":{_str(ev.agent)},"session":{_str(ev.session)},'
        f'"user":{_str(ev.user)},"team":{_str(ev.team)},"task_id":{_str(ev.task_id)},'
        f'"task_type":{_str(ev.task_type)},"tier":{_str(ev.tier)},'
        f'"tags":{_compact.encode(ev.tags) if ev.tags else "{}"},"status":{_esc(ev.status)},'
        f'"http_status":{_num(ev.http_status)},"streamed":{"true" if ev.streamed else "false"},'
        f'"duration_ms":{_num(ev.duration_ms)},"ttft_ms":{_num(ev.ttft_ms)},"source":{_esc(ev.source)}}}'
    )


class AuditLog:
    """A thread-safe appender of event lines; each append is flushed and fsynced."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()

    def append(self, events: Iterable[UsageEvent]) -> int:
        """Append events, one JSON object a line; returns how many were written."""
        lines = [event_line(e) for e in events]
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
