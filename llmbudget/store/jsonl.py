"""Append-only JSONL files: the audit log of every accepted event and the outage spool.

The audit log holds one `UsageEvent.to_dict()` per line, appended by the ledger's writer after
each batch commits (only the events the batch actually added, so the log and the database hold
the same events). Readers never stop at a damaged line: it is reported (file and line number)
with a warning and skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

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
        f'"units":{_compact.encode(ev.units) if ev.units else "{}"}}}'
    )


class AuditLog:
    """A thread-safe appender of event lines; each append is flushed and fsynced.

    The file stays open between appends (an open and close per batch was a measurable part of
    the writer's CPU). If the file is moved or deleted (log rotation), the next append notices
    the path no longer names the open file and reopens it.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._f: BinaryIO | None = None

    def _file(self) -> BinaryIO:
        f = self._f
        if f is not None:
            try:
                st = os.stat(self.path)
                fst = os.fstat(f.fileno())
                if (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev):
                    return f
            except OSError:  # deleted: reopen below (creates it again)
                pass
            f.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = f = open(self.path, "ab")  # noqa: SIM115 -- kept open across appends, closed by close()
        return f

    def append(self, events: Iterable[UsageEvent]) -> int:
        """Append events, one JSON object a line; returns how many were written."""
        lines = [event_line(e) for e in events]
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            f = self._file()
            try:
                f.write(data)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            except OSError:
                self._f = None  # a later append starts from a fresh handle
                with contextlib.suppress(OSError):
                    f.close()
                raise
        return len(lines)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a log dropped without close() must not leak its handle
        f = getattr(self, "_f", None)
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()

    def close(self) -> None:
        """Close the file (a later append reopens it)."""
        with self._lock:
            if self._f is not None:
                with contextlib.suppress(OSError):
                    self._f.close()
                self._f = None


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
