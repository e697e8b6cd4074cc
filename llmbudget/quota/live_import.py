"""`llmbudget import claude-code --watch` / `import codex --watch`: agents' own logs, live.

A `LogFollower` hands out the lines appended since the last poll; each watcher turns them into
events and records them (idempotent on the event id, so a call the proxy already recorded, or a
line read twice, is stored once).

Claude Code logs a response once per content block, each line with the usage so far, so a
response is recorded only once it is complete: when the same file has moved on to another
response, or has not grown for `settle_s` seconds. Codex logs one final token count per call,
recorded at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from ..events import UsageEvent
from ..money import ZERO
from . import claude_code as cc
from . import codex
from .follow import LogFollower, files_under


@dataclass(slots=True)
class Batch:
    """What one poll recorded."""

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


class ClaudeCodeWatcher:
    """Follows Claude Code's project logs and records each response once it is complete."""

    def __init__(self, ledger: Any, prices: Any, roots: list[Path], *, settle_s: float = 2.0) -> None:
        self.ledger = ledger
        self.prices = prices
        self.settle_s = settle_s
        self.follower = LogFollower(lambda: files_under(roots))
        #: key -> (best entry so far, first timestamp, first session)
        self._pending: dict[str, tuple[cc.ClaudeEntry, datetime, str | None]] = {}
        self._last_key: dict[Path, str] = {}
        self._done: set[str] = set()
        self._folder_cwd: dict[Path, str] = {}

    def poll(self, now: float | None = None) -> Batch:
        batch = Batch()
        for ln in self.follower.poll():
            try:
                data = json.loads(ln.text)
            except json.JSONDecodeError as e:
                batch.warnings.append(f"{ln.path}:{ln.lineno}: skipped: not valid JSON: {e.msg}")
                continue
            if isinstance(data, dict) and isinstance(data.get("cwd"), str) and data["cwd"]:
                self._folder_cwd.setdefault(cc._project_dir(ln.path), data["cwd"])
            try:
                entry = cc._parse_line(data, ln.path, ln.lineno)
            except ValidationError as e:
                batch.warnings.append(f"{ln.path}:{ln.lineno}: skipped: {e}")
                continue
            if entry is None or entry.model == cc.SYNTHETIC_MODEL or entry.key in self._done:
                continue
            self._last_key[ln.path] = entry.key
            prev = self._pending.get(entry.key)
            if prev is None:
                self._pending[entry.key] = (entry, entry.timestamp, entry.session)
                continue
            best, first_ts, first_session = prev
            if entry.timestamp < first_ts:
                first_ts, first_session = entry.timestamp, entry.session
            self._pending[entry.key] = (
                entry if entry.usage_total > best.usage_total else best,
                first_ts,
                first_session,
            )
        ready = []
        for key, (entry, first_ts, first_session) in list(self._pending.items()):
            settled = self.follower.idle_for(entry.file, now) >= self.settle_s
            if self._last_key.get(entry.file) != key or settled:
                entry.timestamp, entry.session = first_ts, first_session
                entry.project = (
                    entry.cwd
                    or self._folder_cwd.get(entry.project_dir)
                    or cc.decode_project_dir(entry.project_dir.name)
                )
                ready.append(entry)
                del self._pending[key]
                self._done.add(key)
        if ready:
            pairs = [(e, cc.to_event(e, self.prices)) for e in ready]
            events = cc.keep_earlier_ids(self.ledger, pairs)
            batch.add(events, self.ledger.record_many(events))
        return batch


class CodexWatcher:
    """Follows Codex's session logs and records each call as its token count appears."""

    def __init__(self, ledger: Any, prices: Any, roots: list[Path]) -> None:
        self.ledger = ledger
        self.prices = prices
        self.follower = LogFollower(lambda: files_under(roots))
        self.reader = codex.CodexReader()

    def poll(self, now: float | None = None) -> Batch:
        batch = Batch()
        warned = len(self.reader.scan.warnings)
        calls = codex.feed_lines(self.reader, self.follower.poll())
        batch.warnings.extend(self.reader.scan.warnings[warned:])
        if calls:
            events = [codex.to_event(c, self.prices) for c in calls]
            batch.add(events, self.ledger.record_many(events))
        return batch


def watch(
    watcher: ClaudeCodeWatcher | CodexWatcher,
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


def roots_for(source: str, paths: Sequence[str] | None) -> list[Path]:
    """The directories (or files) a source's watcher follows."""
    if source == "codex":
        return codex.log_roots(paths)
    if paths:
        from ..errors import NotFound

        roots = [Path(p).expanduser() for p in paths]
        for r in roots:
            if not r.exists():
                raise NotFound(f"{r}: no such file or directory")
        return [r / "projects" if (r / "projects").is_dir() else r for r in roots]
    roots = cc.default_log_dirs()
    if not roots:
        from ..errors import NotFound

        raise NotFound(
            "no Claude Code logs found in ~/.claude/projects, ~/.config/claude/projects or "
            "$CLAUDE_CONFIG_DIR/projects; pass the directory as PATH"
        )
    return roots
