"""The quota readings log: `store_reading()` writes a reading to the ledger and to a JSONL log, one file
per UTC day (`<data_dir>/quota/readings-YYYY-MM-DD.jsonl`); `read_log()` reads the log back, skipping a
corrupted line with a warning that names the file and line.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

from ..config import data_dir
from ..store.base import Ledger
from .readings import QuotaReading

log = logging.getLogger("llmbudget.quota")

_log_lock = threading.Lock()


class HasLedger(Protocol):
    """Whatever holds the ledger (`llmbudget.services.Services`)."""

    @property
    def ledger(self) -> Ledger: ...


def default_log_dir() -> Path:
    """`<data_dir>/quota`, where the daily JSONL files live."""
    return data_dir() / "quota"


def log_path(day: datetime, log_dir: Path | None = None) -> Path:
    """The JSONL file for the UTC day of `day`."""
    d = log_dir or default_log_dir()
    return d / f"readings-{day.astimezone(UTC).strftime('%Y-%m-%d')}.jsonl"


def append_log(reading: QuotaReading, *, log_dir: Path | str | None = None) -> Path:
    """Append one reading to its day's JSONL file (one write call per line, so lines never interleave)."""
    path = log_path(reading.timestamp, Path(log_dir) if log_dir else None)
    line = json.dumps(reading.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
    with _log_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line)
    return path


def store_reading(
    services_or_ledger: HasLedger | Ledger | None,
    reading: QuotaReading,
    *,
    log_dir: Path | str | None = None,
    log: bool = True,
) -> None:
    """Store a reading in the ledger (`record_reading`) and append it to the daily JSONL log.

    `services_or_ledger` is a `Services` (its `.ledger` is used), a `Ledger`, or None (log only).
    The log is written first: it is local and cheap, and keeps the reading if the database fails.
    A log that cannot be written (a read-only or full disk) does not keep the reading from the
    ledger: the ledger is written, then the log's OSError is raised.
    """
    log_error: OSError | None = None
    if log:
        try:
            append_log(reading, log_dir=log_dir)
        except OSError as e:
            log_error = e
    # a Services gives its ledger; a Ledger (or None) is itself
    ledger = cast("Ledger | None", getattr(services_or_ledger, "ledger", services_or_ledger))
    if ledger is not None:
        ledger.record_reading(reading.to_dict())
    if log_error is not None:
        raise log_error


def iter_log(
    log_dir: Path | str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    backend: str | None = None,
) -> Iterator[QuotaReading]:
    """Readings from the JSONL log, oldest file first; a corrupted line is skipped with a warning."""
    d = Path(log_dir) if log_dir else default_log_dir()
    if not d.is_dir():
        return
    for path in sorted(d.glob("readings-*.jsonl")):
        day = path.stem.removeprefix("readings-")
        if since is not None and day < since.astimezone(UTC).strftime("%Y-%m-%d"):
            continue
        if until is not None and day > until.astimezone(UTC).strftime("%Y-%m-%d"):
            continue
        try:
            fh = path.open(encoding="utf-8", errors="replace")
        except OSError as e:
            log.warning("quota log unreadable file=%s error=%s", path, e.strerror)
            continue
        with fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    r = QuotaReading.from_dict(json.loads(line))
                except (ValueError, TypeError, AttributeError) as e:
                    log.warning(
                        "quota log: skipping corrupted line file=%s line=%d error=%s",
                        path,
                        lineno,
                        str(e)[:200],
                    )
                    continue
                if since is not None and r.timestamp < since:
                    continue
                if until is not None and r.timestamp >= until:
                    continue
                if backend is not None and r.backend != backend:
                    continue
                yield r


def read_log(
    log_dir: Path | str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    backend: str | None = None,
) -> list[QuotaReading]:
    """All readings in the JSONL log matching the filters, oldest first (corrupted lines skipped)."""
    out = list(iter_log(log_dir, since=since, until=until, backend=backend))
    out.sort(key=lambda r: r.timestamp)
    return out


def latest_by_backend(
    readings: Mapping[str, Mapping[str, Any]] | list[QuotaReading],
) -> dict[str, QuotaReading]:
    """The newest reading per backend, from a list of readings or a ledger's `latest_readings()` dict."""
    items: list[QuotaReading] = []
    if isinstance(readings, Mapping):
        for d in readings.values():
            try:
                items.append(QuotaReading.from_dict(d))
            except ValueError as e:
                log.warning("quota: skipping stored reading error=%s", e)
    else:
        items = list(readings)
    out: dict[str, QuotaReading] = {}
    for r in items:
        cur = out.get(r.backend)
        if cur is None or r.timestamp >= cur.timestamp:
            out[r.backend] = r
    return out


# ---------------------------------------------------------------- helpers
