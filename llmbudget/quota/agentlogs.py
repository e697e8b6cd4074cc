"""What every agent's own-log importer shares: finding the logs, reading or following them line by
line, skipping bad lines with a warning, and recording the calls found, once, in the ledger.

An agent's module (`llmbudget/quota/claude_code.py`, `llmbudget/quota/codex.py`) supplies only
what differs: where its logs live (`AgentLogs`), how a line becomes a call and when a call is
complete (a `LogReader`), and how a call becomes a `UsageEvent`. The same reader serves a one-off
import (whole files, `read_files`) and `--watch` (the lines a `LogFollower` hands out, `LogWatcher`).
Re-reading adds nothing: events' ids are derived from the logs and the ledger stores an id once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..errors import NotFound, ValidationError
from ..events import UsageEvent
from ..money import ZERO
from ..pricing.book import PriceBook
from ..store.base import Ledger
from .follow import LogFollower, NewLine, files_under

log = logging.getLogger(__name__)


class Logged(Protocol):
    """A call read from a log: where it was logged."""

    file: Path
    line: int


T = TypeVar("T", bound=Logged)
C = TypeVar("C", bound=Logged)
ScanT = TypeVar("ScanT", bound="LogScan")


@dataclass(slots=True)
class LogScan:
    """Counts every agent's reader keeps; an agent's scan adds its own (and the calls found)."""

    files: int = 0
    #: non-blank lines read
    lines: int = 0
    #: one message per skipped line: `file:line: skipped: reason`
    warnings: list[str] = field(default_factory=list)


class LogReader(ABC, Generic[T, ScanT]):
    """Turns an agent's JSONL log lines into calls (`T`), counting into `scan` (`ScanT`)."""

    #: the agent's name in logged warnings (`<agent>.skip file=... line=... reason=...`)
    agent: ClassVar[str]
    log: ClassVar[logging.Logger]

    def __init__(self, scan: ScanT) -> None:
        self.scan = scan

    def feed(self, line: NewLine) -> None:
        """One non-blank line; a line that is not JSON or fails the agent's checks becomes a warning."""
        self.scan.lines += 1
        try:
            data = json.loads(line.text)
        except json.JSONDecodeError as e:
            self.skip(line.path, line.lineno, f"not valid JSON: {e.msg} (column {e.colno})")
            return
        try:
            self.take(line, data)
        except ValidationError as e:
            self.skip(line.path, line.lineno, str(e))

    def read_files(self, files: Iterable[Path]) -> None:
        """Feed whole files, in order (an unreadable file is a warning on its line 0)."""
        for path in files:
            self.scan.files += 1
            try:
                fh = path.open("r", encoding="utf-8", errors="replace")
            except OSError as e:
                self.skip(path, 0, f"cannot read file: {e.strerror}")
                continue
            with fh:
                for lineno, text in enumerate(fh, start=1):
                    if text.strip():
                        self.feed(NewLine(path, lineno, text))

    def skip(self, path: Path, lineno: int, reason: str) -> None:
        self.scan.warnings.append(f"{path}:{lineno}: skipped: {reason}")
        self.log.warning("%s.skip file=%s line=%d reason=%s", self.agent, path, lineno, reason)

    @abstractmethod
    def take(self, line: NewLine, data: object) -> None:
        """Read one parsed line (raise ValidationError to skip it with a warning)."""

    @abstractmethod
    def complete(self, settled: Callable[[Path], bool] | None = None) -> list[T]:
        """Hand out the calls that are complete, once each. `settled(path)` says a file has stopped
        growing for now; None means every file was read to its end."""


@dataclass(frozen=True, slots=True)
class AgentLogs(Generic[T, ScanT]):
    """One agent's logs: where they are, how to read them, how a call becomes an event."""

    #: the `import` source's name (`claude-code`, `codex`)
    name: str
    #: the sub-directory a given agent home is searched under (`projects`, `sessions`)
    subdir: str
    #: the agent's default log directories that exist
    default_dirs: Callable[[], list[Path]]
    #: the NotFound message when there are none
    missing: Callable[[], str]
    reader: Callable[[], LogReader[T, ScanT]]
    #: `(ledger, prices, calls)` -> the events to record, priced (prices None: left unpriced)
    to_events: Callable[[Ledger, PriceBook | None, list[T]], list[UsageEvent]]
    #: how to order the calls of a whole read
    order: Callable[[T], tuple[datetime, str]]

    def roots(self, paths: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
        """The files and directories to read: the given ones (an agent home is searched under
        `subdir`), else the agent's default directories."""
        if paths:
            roots = [Path(p).expanduser() for p in paths]
            for r in roots:
                if not r.exists():
                    raise NotFound(f"{r}: no such file or directory")
            return [r / self.subdir if (r / self.subdir).is_dir() else r for r in roots]
        roots = self.default_dirs()
        if not roots:
            raise NotFound(self.missing())
        return roots

    def find_files(self, paths: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
        """Every `*.jsonl` under `roots(paths)`, sorted."""
        return files_under(self.roots(paths))

    def read(self, files: Iterable[Path]) -> tuple[list[T], ScanT]:
        """Read whole files: every call found, in order, and the scan's counts."""
        reader = self.reader()
        reader.read_files(files)
        return sorted(reader.complete(), key=self.order), reader.scan

    def events(
        self, ledger: Ledger, prices: PriceBook | None, calls: list[T], scan: LogScan
    ) -> list[UsageEvent]:
        """The events to record for `calls`; a call that cannot be one is a warning in `scan`."""
        return each_event(calls, lambda cs: self.to_events(ledger, prices, cs), scan, self.name)

    def watcher(
        self, ledger: Ledger, prices: PriceBook | None, roots: list[Path], *, settle_s: float = 2.0
    ) -> LogWatcher:
        """Follow the logs under `roots`, recording calls as they complete."""
        return LogWatcher(self, ledger, prices, roots, settle_s=settle_s)


def each_event(
    calls: list[C], convert: Callable[[list[C]], list[UsageEvent]], scan: LogScan, source: str
) -> list[UsageEvent]:
    """`convert(calls)`, except that a call whose event fails the ledger's checks (a token count
    beyond any call's, a session id no ledger stores) is skipped with a warning naming its file and
    line, as a corrupted line is: one bad call never stops an import or a watch."""
    try:
        return convert(calls)
    except ValidationError:
        pass
    out: list[UsageEvent] = []
    for call in calls:
        try:
            out.extend(convert([call]))
        except ValidationError as e:
            scan.warnings.append(f"{call.file}:{call.line}: skipped: {e}")
            log.warning("%s.skip file=%s line=%d reason=%s", source, call.file, call.line, e)
    return out


def record(ledger: Ledger, events: list[UsageEvent]) -> int:
    """Record events in the ledger; how many were new (an id already there is skipped)."""
    return ledger.record_many(events) if events else 0


@dataclass(frozen=True, slots=True)
class Totals:
    """An import's events in sum."""

    unpriced: int
    cost_usd: Decimal
    sessions: int

    @classmethod
    def of(cls, events: list[UsageEvent]) -> Totals:
        return cls(
            unpriced=sum(1 for e in events if e.price_status == "unpriced"),
            cost_usd=sum((e.cost_usd for e in events if e.cost_usd is not None), ZERO),
            sessions=len({e.session for e in events if e.session}),
        )


@dataclass(slots=True)
class Batch:
    """What was recorded: by one poll of a watcher, or an import's events."""

    new: int = 0
    seen: int = 0
    cost_usd: Decimal = ZERO
    unpriced: int = 0
    sessions: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def add(self, events: list[UsageEvent], new: int) -> None:
        self.seen += len(events)
        self.new += new
        for e in events:
            if e.cost_usd is None:
                self.unpriced += 1
            else:
                self.cost_usd += e.cost_usd
            if e.session:
                self.sessions.add(e.session)


class LogWatcher:
    """Follows an agent's logs (`import ... --watch`); each poll records the calls now complete.

    A file that has not grown for `settle_s` seconds counts as settled (a Claude Code response
    logged block by block is complete then).
    """

    def __init__(
        self,
        logs: AgentLogs[Any, Any],
        ledger: Ledger,
        prices: PriceBook | None,
        roots: list[Path],
        *,
        settle_s: float,
    ) -> None:
        self.logs = logs
        self.ledger = ledger
        self.prices = prices
        self.settle_s = settle_s
        self.follower = LogFollower(lambda: files_under(roots))
        self.reader = logs.reader()

    def poll(self, now: float | None = None) -> Batch:
        batch = Batch()
        for ln in self.follower.poll():
            self.reader.feed(ln)
        ready = self.reader.complete(lambda p: self.follower.idle_for(p, now) >= self.settle_s)
        if ready:
            events = self.logs.events(self.ledger, self.prices, ready, self.reader.scan)
            batch.add(events, record(self.ledger, events))
        batch.warnings = list(self.reader.scan.warnings)
        self.reader.scan.warnings.clear()
        return batch


def watch(
    watcher: LogWatcher,
    *,
    interval_s: float,
    on_batch: Callable[[Batch], None],
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll until `should_stop()` (or Ctrl-C, which the caller catches)."""
    while not should_stop():
        batch = watcher.poll()
        if batch.seen or batch.warnings:
            on_batch(batch)
        sleep(interval_s)
