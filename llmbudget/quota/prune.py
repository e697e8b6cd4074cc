"""Quota readings past the retention period: archived to gzip JSONL, then deleted.

Both places readings live are pruned: the ledger and the daily JSONL log. An archive is complete
on disk before anything is deleted.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict

from ..store import Ledger
from .analysis import iso_utc

DEFAULT_RETENTION_DAYS = 30


class PruneDict(TypedDict):
    """What `llmbudget analyze --prune-before` reports."""

    before: str | None
    dry_run: bool
    ledger_readings: int
    log_files: list[str]
    log_readings: int
    archives: list[str]


@dataclass(slots=True)
class PruneResult:
    before: datetime
    dry_run: bool
    ledger_readings: int = 0
    log_files: list[str] = field(default_factory=list)
    log_readings: int = 0
    archives: list[str] = field(default_factory=list)

    def to_dict(self) -> PruneDict:
        return {
            "before": iso_utc(self.before),
            "dry_run": self.dry_run,
            "ledger_readings": self.ledger_readings,
            "log_files": list(self.log_files),
            "log_readings": self.log_readings,
            "archives": list(self.archives),
        }


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def prune_readings(
    ledger: Ledger | None,
    *,
    before: datetime,
    log_dir: Path,
    archive_dir: Path,
    now: datetime,
    dry_run: bool = False,
) -> PruneResult:
    """Archive readings older than `before` to gzip JSONL under `archive_dir`, then delete them.

    Both places readings live are pruned: the ledger (one archive per run) and the daily
    JSONL log (a file whose whole day lies before `before` is moved into
    `archive_dir/readings-YYYY-MM-DD.jsonl.gz`). With `dry_run` nothing is written or deleted.
    """
    res = PruneResult(before=before, dry_run=dry_run)
    old_days: list[Path] = []
    if log_dir.is_dir():
        for p in sorted(log_dir.glob("readings-*.jsonl")):
            end = _day_end(p)
            if end is not None and end <= before:  # the whole day lies before the cut-off
                old_days.append(p)
    if ledger is not None:
        if dry_run:
            res.ledger_readings = ledger.prune_readings(before, dry_run=True)
        else:
            rows = ledger.readings(until=before, limit=None)
            if rows:
                archive_dir.mkdir(parents=True, exist_ok=True)
                stem = f"ledger-readings-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
                path = archive_dir / f"{stem}.jsonl.gz"
                n = 1
                while path.exists():  # never overwrite an earlier archive
                    n += 1
                    path = archive_dir / f"{stem}-{n}.jsonl.gz"
                _write_gzip_lines(
                    path, (json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in rows)
                )
                res.archives.append(str(path))
            res.ledger_readings = ledger.prune_readings(before)
    for p in old_days:
        res.log_files.append(str(p))
        res.log_readings += _count_lines(p)
        if dry_run:
            continue
        archive_dir.mkdir(parents=True, exist_ok=True)
        dest = archive_dir / (p.name + ".gz")
        # append as another gzip member if an earlier run archived the same day (gzip reads both)
        with p.open("rb") as src, gzip.open(dest, "ab") as out:
            for chunk in iter(lambda: src.read(1 << 16), b""):
                out.write(chunk)
        os.unlink(p)
        res.archives.append(str(dest))
    return res


def _day_end(path: Path) -> datetime | None:
    """The end (exclusive) of the UTC day a `readings-YYYY-MM-DD.jsonl` file holds."""
    try:
        day = datetime.strptime(path.stem.removeprefix("readings-"), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return day + timedelta(days=1)


def _write_gzip_lines(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line)
    os.replace(tmp, path)  # the archive is complete before anything is deleted
