"""Import Claude Code's local session logs: usage that never passed the proxy.

Claude Code writes one JSONL file per session under `~/.claude/projects/<encoded-dir>/`
(also `$CLAUDE_CONFIG_DIR/projects`, comma-separated directories allowed). Each
assistant line carries `message.usage` with Anthropic semantics: `input_tokens`
excludes cache reads and writes. A response is logged once per content block and
again when a session is resumed, so lines are de-duplicated across all files on
`message.id` + `requestId`, the line with the largest usage winning.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ValidationError
from ..events import UsageEvent, anthropic_call_id, parse_timestamp
from ..money import decimal_str
from ..pricing import PriceBook
from ..pricing.normalize import anthropic_usage
from ..store import Ledger
from .agentlogs import AgentLogs, LogReader, LogScan, Totals, each_event, record
from .follow import NewLine

log = logging.getLogger(__name__)

BACKEND = "claude-code"
AGENT = "claude-code"
PROVIDER = "anthropic"
#: Claude Code's own notices (API errors, interruptions) use this model name; no call is behind them
SYNTHETIC_MODEL = "<synthetic>"
#: fixed namespace so the same response always gets the same event id (re-imports add nothing)
_ID_NAMESPACE = uuid.UUID("5d1b7c52-0c4e-4f0b-9a51-6c6c61756465")
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass(slots=True)
class ClaudeEntry:
    """One assistant response as read from the logs (raw Anthropic token semantics)."""

    key: str
    timestamp: datetime
    session: str | None
    model: str
    message_id: str | None
    request_id: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    cwd: str | None
    project_dir: Path
    version: str | None
    logged_cost_usd: Decimal | None
    file: Path
    line: int
    #: the line's `message.usage` as logged (per-TTL cache breakdown included)
    raw_usage: dict[str, Any] = field(default_factory=dict)
    project: str | None = None

    @property
    def usage_total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_tokens + self.cache_read_tokens


@dataclass(slots=True)
class ClaudeScan(LogScan):
    """What reading the logs found: unique responses plus counts of what was merged or skipped."""

    entries: list[ClaudeEntry] = field(default_factory=list)
    #: assistant lines with usage that repeated a response already seen (content blocks, resumed sessions)
    duplicates: int = 0
    #: Claude Code's own `<synthetic>` notices, not API calls
    synthetic: int = 0


@dataclass(slots=True)
class ImportResult:
    """The outcome of `import_claude_code`."""

    files: int
    lines: int
    responses: int
    duplicates: int
    synthetic: int
    new: int
    unpriced: int
    cost_usd: Decimal
    sessions: int
    projects: list[str]
    warnings: list[str]

    @property
    def already_imported(self) -> int:
        return self.responses - self.new

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "responses": self.responses,
            "new": self.new,
            "already_imported": self.already_imported,
            "duplicates": self.duplicates,
            "synthetic": self.synthetic,
            "unpriced": self.unpriced,
            "cost_usd": decimal_str(self.cost_usd),
            "sessions": self.sessions,
            "projects": list(self.projects),
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------- where the logs are
def default_log_dirs(env: dict[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """Claude Code's `projects` directories that exist: `$CLAUDE_CONFIG_DIR` (comma-separated), then the defaults."""
    env = dict(os.environ) if env is None else env
    home = Path.home() if home is None else home
    candidates: list[Path] = []
    for part in (env.get("CLAUDE_CONFIG_DIR") or "").split(","):
        if part.strip():
            candidates.append(Path(part.strip()).expanduser() / "projects")
    xdg = env.get("XDG_CONFIG_HOME")
    candidates.append((Path(xdg) if xdg else home / ".config") / "claude" / "projects")
    candidates.append(home / ".claude" / "projects")
    seen: set[Path] = set()
    found: list[Path] = []
    for c in candidates:
        r = c.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            found.append(c)
    return found


def find_log_files(paths: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Every `*.jsonl` under the given files/directories (default: `default_log_dirs()`), sorted.

    A directory holding a `projects` folder (a Claude config dir) is searched there.
    """
    return CLAUDE_CODE.find_files(paths)


# ---------------------------------------------------------------------------- reading
def _project_dir(file: Path) -> Path:
    """The `projects/<encoded>` folder a log file belongs to (subagent logs sit deeper)."""
    for parent in file.parents:
        if parent.parent.name == "projects":
            return parent
    return file.parent


def decode_project_dir(name: str) -> str:
    """Turn Claude Code's folder name (`-home-alice-code-webapp`) back into a path.

    The encoding replaces `/` (and other punctuation) by `-`, so it is lossy: prefer a
    path that exists on this machine (`api-server` stays one component when that
    directory exists), else split on every dash.
    """
    parts = [p for p in name.strip("-").split("-") if p]
    if not parts:
        return name

    def walk(base: Path, i: int) -> Path | None:
        if i == len(parts):
            return base
        for j in range(len(parts), i, -1):  # longest component first
            cand = base / "-".join(parts[i:j])
            if cand.is_dir() or (j == len(parts) and cand.exists()):
                found = walk(cand, j)
                if found is not None:
                    return found
        return None

    found = walk(Path("/"), 0)
    return str(found) if found is not None else "/" + "/".join(parts)


def _int_field(usage: dict[str, Any], name: str) -> int:
    v = usage.get(name, 0)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValidationError(f"message.usage.{name}", f"must be a non-negative integer, got {v!r}")
    return v


def _parse_line(data: object, file: Path, line: int) -> ClaudeEntry | None:
    """An assistant response with usage, or None for every other kind of line. Raises ValidationError."""
    if not isinstance(data, dict) or data.get("type") != "assistant":
        return None
    msg = data.get("message")
    if not isinstance(msg, dict) or not isinstance(msg.get("usage"), dict):
        return None
    usage = msg["usage"]
    tokens = {name: _int_field(usage, name) for name in _USAGE_FIELDS}
    # newer logs may carry only the per-TTL breakdown of cache writes
    tokens["cache_creation_input_tokens"] = anthropic_usage(usage).cache_write_tokens
    if "timestamp" not in data:
        raise ValidationError("timestamp", "is missing")
    ts = parse_timestamp(data["timestamp"])
    model = msg.get("model")
    model = model if isinstance(model, str) and model else "unknown"
    message_id = msg.get("id") if isinstance(msg.get("id"), str) else None
    request_id = data.get("requestId") if isinstance(data.get("requestId"), str) else None
    if message_id:
        key = f"{message_id}:{request_id or ''}"
    elif isinstance(data.get("uuid"), str):
        key = f"uuid:{data['uuid']}"
    else:  # nothing to de-duplicate on: the line's content is its identity
        key = "line:" + json.dumps(data, sort_keys=True)
    cost = data.get("costUSD")
    logged_cost: Decimal | None = None
    if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0:
        logged_cost = Decimal(repr(cost))
    session = data.get("sessionId")
    cwd = data.get("cwd")
    version = data.get("version")
    return ClaudeEntry(
        key=key,
        timestamp=ts,
        session=session if isinstance(session, str) else None,
        model=model,
        message_id=message_id,
        request_id=request_id,
        input_tokens=tokens["input_tokens"],
        output_tokens=tokens["output_tokens"],
        cache_creation_tokens=tokens["cache_creation_input_tokens"],
        cache_read_tokens=tokens["cache_read_input_tokens"],
        cwd=cwd if isinstance(cwd, str) and cwd else None,
        project_dir=_project_dir(file),
        version=version if isinstance(version, str) else None,
        logged_cost_usd=logged_cost,
        file=file,
        line=line,
        raw_usage=usage,
    )


@dataclass(slots=True)
class _Pending:
    """A response seen so far: its largest line, and when and in which session it was first logged."""

    best: ClaudeEntry
    first_ts: datetime
    first_session: str | None


class ClaudeCodeReader(LogReader[ClaudeEntry, ClaudeScan]):
    """Merges the lines of each response (across all files) into one entry.

    A response is logged once per content block, each line with the usage so far, and again when a
    session is resumed. It is complete when the file it was logged in has moved on to another
    response or has settled (stopped growing), or when every file was read to its end.
    """

    agent = "claude_code"
    log: ClassVar[logging.Logger] = log

    def __init__(self) -> None:
        super().__init__(ClaudeScan())
        self._pending: dict[str, _Pending] = {}
        self._last_key: dict[Path, str] = {}
        self._done: set[str] = set()
        self._folder_cwd: dict[Path, str] = {}

    def take(self, line: NewLine, data: object) -> None:
        if isinstance(data, dict) and isinstance(data.get("cwd"), str) and data["cwd"]:
            self._folder_cwd.setdefault(_project_dir(line.path), data["cwd"])
        entry = _parse_line(data, line.path, line.lineno)
        if entry is None:
            return
        if entry.model == SYNTHETIC_MODEL:
            self.scan.synthetic += 1
            return
        if entry.key in self._done:  # a response handed out already (watch mode)
            self.scan.duplicates += 1
            return
        self._last_key[line.path] = entry.key
        prev = self._pending.get(entry.key)
        if prev is None:
            self._pending[entry.key] = _Pending(entry, entry.timestamp, entry.session)
            return
        self.scan.duplicates += 1
        if entry.timestamp < prev.first_ts:
            prev.first_ts, prev.first_session = entry.timestamp, entry.session
        if entry.usage_total > prev.best.usage_total:
            prev.best = entry

    def complete(self, settled: Callable[[Path], bool] | None = None) -> list[ClaudeEntry]:
        out: list[ClaudeEntry] = []
        for key, p in list(self._pending.items()):
            entry = p.best
            if settled is not None and self._last_key.get(entry.file) == key and not settled(entry.file):
                continue
            # the response happened when it was first logged, in the session that made it (a resumed
            # session re-logs it later); its usage is the largest logged (the last content block)
            entry.timestamp, entry.session = p.first_ts, p.first_session
            entry.project = (
                entry.cwd
                or self._folder_cwd.get(entry.project_dir)
                or decode_project_dir(entry.project_dir.name)
            )
            out.append(entry)
            del self._pending[key]
            self._done.add(key)
        return out


def read_logs(files: Iterable[Path]) -> ClaudeScan:
    """Read log files into unique responses. Corrupted lines are skipped with a warning naming file and line."""
    entries, scan = CLAUDE_CODE.read(files)
    scan.entries = entries
    return scan


# ---------------------------------------------------------------------------- events
def event_id(entry: ClaudeEntry) -> str:
    """A deterministic event id for a response: the same response always maps to the same id.

    A response with Anthropic's request id gets the id the proxy records the same call under
    (`events.anthropic_call_id`), so a call that went through the proxy and is also in the logs is
    stored once, whichever came first.
    """
    return anthropic_call_id(entry.request_id) or legacy_event_id(entry)


def legacy_event_id(entry: ClaudeEntry) -> str:
    """The id earlier versions imported every response under (message id + request id)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"claude-code:{entry.key}"))


def event_id_for(message_id: str, request_id: str | None) -> str:
    """The event id a response with this message id and request id is imported under."""
    return anthropic_call_id(request_id) or str(
        uuid.uuid5(_ID_NAMESPACE, f"claude-code:{message_id}:{request_id or ''}")
    )


def keep_earlier_ids(ledger: Ledger, pairs: Iterable[tuple[ClaudeEntry, UsageEvent]]) -> list[UsageEvent]:
    """Events to record: one imported before under its legacy id keeps that id (re-imports add nothing)."""
    out: list[UsageEvent] = []
    for entry, ev in pairs:
        legacy = legacy_event_id(entry)
        if legacy != ev.id and ledger.get(legacy) is not None:
            ev = ev.with_(id=legacy)
        out.append(ev)
    return out


def to_event(entry: ClaudeEntry, prices: PriceBook | None) -> UsageEvent:
    """One UsageEvent for a response, priced with the price book (`prices`, a PriceBook or None)."""
    tags = {"project": entry.project or entry.project_dir.name}
    if entry.version:
        tags["claude_code_version"] = entry.version
    # Anthropic's input_tokens exclude cache reads and writes; ours include them
    n = anthropic_usage(entry.raw_usage)
    event = UsageEvent(
        backend=BACKEND,
        provider=PROVIDER,
        model=entry.model,
        id=event_id(entry),
        timestamp=entry.timestamp,
        agent=AGENT,
        session=entry.session,
        tags=tags,
        source="import",
        **n.as_dict(),  # 1-hour cache writes, web searches and fast mode included, so they are priced
    )
    if prices is not None:
        event = _price(prices, event)
    if event.price_status == "unpriced" and entry.logged_cost_usd is not None:
        # older Claude Code versions logged their own cost estimate: better than no price at all
        tags = {**event.tags, "cost_source": "claude-code"}
        event = event.with_(cost_usd=entry.logged_cost_usd, price_status="priced", tags=tags)
    return event


def _price(prices: PriceBook, event: UsageEvent) -> UsageEvent:
    """Price an event with the PriceBook; an unknown model stays `unpriced`."""
    return prices.price_event(event)


def _to_events(ledger: Ledger, prices: PriceBook | None, entries: list[ClaudeEntry]) -> list[UsageEvent]:
    """Events to record: one imported before under its legacy id keeps that id."""
    return keep_earlier_ids(ledger, ((e, to_event(e, prices)) for e in entries))


CLAUDE_CODE: AgentLogs[ClaudeEntry, ClaudeScan] = AgentLogs(
    name="claude-code",
    subdir="projects",
    default_dirs=default_log_dirs,
    missing=lambda: (
        "no Claude Code logs found in ~/.claude/projects, ~/.config/claude/projects or "
        "$CLAUDE_CONFIG_DIR/projects; pass the directory as PATH"
    ),
    reader=ClaudeCodeReader,
    to_events=_to_events,
    order=lambda e: (e.timestamp, e.key),
)


def load_events(
    paths: Sequence[str | os.PathLike[str]] | None, prices: PriceBook | None
) -> tuple[list[UsageEvent], ClaudeScan]:
    """Read the logs under `paths` (default locations when empty) into priced events, oldest first."""
    scan = read_logs(find_log_files(paths))
    events = each_event(scan.entries, lambda es: [to_event(e, prices) for e in es], scan, CLAUDE_CODE.name)
    return events, scan


def import_claude_code(
    ledger: Ledger, paths: Sequence[str | os.PathLike[str]] | None, prices: PriceBook | None
) -> ImportResult:
    """Import Claude Code's logs into the ledger; idempotent (re-importing records nothing new)."""
    scan = read_logs(find_log_files(paths))
    events = CLAUDE_CODE.events(ledger, prices, scan.entries, scan)
    new = record(ledger, events)
    totals = Totals.of(events)
    return ImportResult(
        files=scan.files,
        lines=scan.lines,
        responses=len(events),
        duplicates=scan.duplicates,
        synthetic=scan.synthetic,
        new=new,
        unpriced=totals.unpriced,
        cost_usd=totals.cost_usd,
        sessions=totals.sessions,
        projects=sorted({e.tags["project"] for e in events}),
        warnings=list(scan.warnings),
    )
