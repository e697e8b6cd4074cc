"""Import Codex CLI's session logs (rollout files): the usage of every model call Codex made.

Codex writes one JSONL file per session under `$CODEX_HOME/sessions/YYYY/MM/DD/rollout-*.jsonl`
(`CODEX_HOME` defaults to `~/.codex`; archived sessions move to `archived_sessions/`). Each line
is a `RolloutLine` (codex-rs/protocol `protocol.rs`): `{"timestamp", "type", "payload"}` with
`type` one of `session_meta` (the session `id`, `cwd`, `cli_version`, `model_provider`),
`turn_context` (the `model` of the turns that follow), `response_item` and `event_msg`. A model
call's usage is an `event_msg` whose payload is `{"type": "token_count", "info": {...}}`, `info`
holding `last_token_usage` (this call) and `total_token_usage` (the session so far), each
`{input_tokens, cached_input_tokens, output_tokens, reasoning_output_tokens, total_tokens}` with
OpenAI's meaning (input includes cached, output includes reasoning). `info` is null when only
rate limits changed, and Codex repeats a token count without a new call at times: a count whose
session total did not move is skipped.

The event id is derived from the session and its running total, so re-importing (and the same
lines copied into a resumed or forked session's file) adds nothing. Sessions Codex ran through
`llmbudget run` (provider `llmbudget`) were metered by the proxy and are skipped.
"""

from __future__ import annotations

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
from ..events import UsageEvent, parse_timestamp
from ..money import decimal_str
from ..pricing.book import PriceBook
from ..store.base import Ledger
from .agentlogs import AgentLogs, LogReader, LogScan, Totals, record
from .follow import NewLine

log = logging.getLogger(__name__)

BACKEND = "codex"
AGENT = "codex"
PROVIDER = "openai"
#: the provider id `llmbudget run` gives Codex: those calls went through the proxy
PROXIED_PROVIDER = "llmbudget"
_ID_NAMESPACE = uuid.UUID("0c0dec5e-7f1b-4a55-9e1e-636f64657831")
_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens", "total_tokens")


@dataclass(slots=True)
class CodexCall:
    """One model call as Codex logged it."""

    id: str
    timestamp: datetime
    session: str | None
    model: str
    usage: dict[str, int]
    cwd: str | None
    cli_version: str | None
    file: Path
    line: int


@dataclass(slots=True)
class _FileState:
    session: str | None = None
    model: str | None = None
    cwd: str | None = None
    cli_version: str | None = None
    provider: str | None = None
    last_total: tuple[int, ...] | None = None


@dataclass(slots=True)
class CodexScan(LogScan):
    """What reading the logs found."""

    calls: list[CodexCall] = field(default_factory=list)
    #: token counts that repeated the session's total (no new call)
    repeated: int = 0
    #: calls of sessions run through the proxy (`llmbudget run`), already metered there
    proxied: int = 0


@dataclass(slots=True)
class CodexImportResult:
    files: int
    lines: int
    calls: int
    new: int
    repeated: int
    proxied: int
    unpriced: int
    cost_usd: Decimal
    sessions: int
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "calls": self.calls,
            "new": self.new,
            "already_imported": self.calls - self.new,
            "repeated_counts": self.repeated,
            "proxied_calls_skipped": self.proxied,
            "unpriced": self.unpriced,
            "cost_usd": decimal_str(self.cost_usd),
            "sessions": self.sessions,
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------- where the logs are
def codex_home(env: dict[str, str] | None = None, home: Path | None = None) -> Path:
    """`$CODEX_HOME`, else `~/.codex`."""
    env = dict(os.environ) if env is None else env
    if env.get("CODEX_HOME"):
        return Path(env["CODEX_HOME"]).expanduser()
    return (Path.home() if home is None else home) / ".codex"


def default_log_dirs(env: dict[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """Codex's `sessions` and `archived_sessions` directories that exist."""
    base = codex_home(env, home)
    return [d for d in (base / "sessions", base / "archived_sessions") if d.is_dir()]


def find_log_files(paths: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Every `*.jsonl` under the given paths (default: Codex's session directories), sorted."""
    return CODEX.find_files(paths)


# ---------------------------------------------------------------------------- reading
def _usage(info: dict[str, Any], key: str) -> dict[str, int] | None:
    raw = info.get(key)
    if not isinstance(raw, dict):
        return None
    out: dict[str, int] = {}
    for name in _FIELDS:
        v = raw.get(name, 0)
        if v is None:
            v = 0
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValidationError(f"info.{key}.{name}", f"must be a non-negative integer, got {v!r}")
        out[name] = v
    return out


class CodexReader(LogReader[CodexCall, CodexScan]):
    """Turns rollout lines into calls; keeps each file's session, model and running total.

    Codex logs one final token count per call, so a call is complete as soon as its line is read.
    """

    agent = "codex"
    log: ClassVar[logging.Logger] = log

    def __init__(self) -> None:
        super().__init__(CodexScan())
        self._files: dict[Path, _FileState] = {}
        self._ready: list[CodexCall] = []

    def take(self, line: NewLine, data: object) -> None:
        if not isinstance(data, dict):
            return
        kind, payload = data.get("type"), data.get("payload")
        if not isinstance(payload, dict):
            return
        state = self._files.get(line.path)
        if state is None:
            state = self._files[line.path] = _FileState()
        call = self._item(state, kind, payload, data, line.path, line.lineno)
        if call is not None:
            self._ready.append(call)

    def complete(self, settled: Callable[[Path], bool] | None = None) -> list[CodexCall]:
        ready, self._ready = self._ready, []
        return ready

    def _item(
        self,
        state: _FileState,
        kind: object,
        payload: dict[str, Any],
        data: dict[str, Any],
        path: Path,
        lineno: int,
    ) -> CodexCall | None:
        if kind == "session_meta":
            inner = payload.get("meta")
            meta: dict[str, Any] = inner if isinstance(inner, dict) else payload
            if isinstance(meta.get("id"), str):
                state.session = meta["id"]
            for attr, name in (
                ("cwd", "cwd"),
                ("cli_version", "cli_version"),
                ("provider", "model_provider"),
            ):
                if isinstance(meta.get(name), str):
                    setattr(state, attr, meta[name])
            if isinstance(meta.get("model"), str):
                state.model = meta["model"]
            return None
        if kind == "turn_context":
            if isinstance(payload.get("model"), str) and payload["model"]:
                state.model = payload["model"]
            if isinstance(payload.get("cwd"), str):
                state.cwd = payload["cwd"]
            return None
        if kind != "event_msg" or payload.get("type") != "token_count":
            return None
        info = payload.get("info")
        if not isinstance(info, dict):
            return None  # a rate-limit update only
        total = _usage(info, "total_token_usage")
        last = _usage(info, "last_token_usage")
        if total is None and last is None:
            return None
        key = tuple((total or last or {}).values())
        if total is not None and key == state.last_total:
            self.scan.repeated += 1
            return None
        prev = state.last_total
        state.last_total = key if total is not None else prev
        if last is None:  # older logs: the call is the step in the running total
            assert total is not None
            last = {n: total[n] - (prev[i] if prev else 0) for i, n in enumerate(_FIELDS)}
            if any(v < 0 for v in last.values()):
                last = total
        if "timestamp" not in data:
            raise ValidationError("timestamp", "is missing")
        ts = parse_timestamp(data["timestamp"])
        session = state.session
        ident = f"codex:{session or path.name}:{':'.join(map(str, key))}"
        call = CodexCall(
            id=str(uuid.uuid5(_ID_NAMESPACE, ident)),
            timestamp=ts,
            session=session,
            model=state.model or "unknown",
            usage=last,
            cwd=state.cwd,
            cli_version=state.cli_version,
            file=path,
            line=lineno,
        )
        if state.provider == PROXIED_PROVIDER:
            self.scan.proxied += 1
            return None
        return call


def read_logs(files: Iterable[Path]) -> CodexScan:
    """Read whole log files into calls, oldest first."""
    calls, scan = CODEX.read(files)
    scan.calls = calls
    return scan


# ---------------------------------------------------------------------------- events
def to_event(call: CodexCall, prices: PriceBook | None) -> UsageEvent:
    """One UsageEvent for a call, priced with the price book (None: left unpriced)."""
    u = call.usage
    inp = max(u["input_tokens"], u["cached_input_tokens"])
    out = max(u["output_tokens"], u["reasoning_output_tokens"])
    tags = {"source_app": "codex"}
    if call.cwd:
        tags["project"] = call.cwd
    if call.cli_version:
        tags["codex_version"] = call.cli_version
    event = UsageEvent(
        backend=BACKEND,
        provider=PROVIDER,
        model=call.model,
        id=call.id,
        timestamp=call.timestamp,
        agent=AGENT,
        session=call.session,
        tags=tags,
        source="import",
        input_tokens=inp,
        cached_input_tokens=u["cached_input_tokens"],
        output_tokens=out,
        reasoning_tokens=u["reasoning_output_tokens"],
    )
    if prices is not None:
        event = prices.price_event(event)
    return event


def _to_events(ledger: Ledger, prices: PriceBook | None, calls: list[CodexCall]) -> list[UsageEvent]:
    return [to_event(c, prices) for c in calls]


CODEX: AgentLogs[CodexCall, CodexScan] = AgentLogs(
    name="codex",
    subdir="sessions",
    default_dirs=default_log_dirs,
    missing=lambda: (
        f"no Codex session logs found in {codex_home()}/sessions ($CODEX_HOME); pass the directory as PATH"
    ),
    reader=CodexReader,
    to_events=_to_events,
    order=lambda c: (c.timestamp, c.id),
)


def import_codex(
    ledger: Ledger, paths: Sequence[str | os.PathLike[str]] | None, prices: PriceBook | None
) -> CodexImportResult:
    """Import Codex's session logs into the ledger; idempotent."""
    scan = read_logs(find_log_files(paths))
    events = CODEX.events(ledger, prices, scan.calls, scan)
    new = record(ledger, events)
    totals = Totals.of(events)
    return CodexImportResult(
        files=scan.files,
        lines=scan.lines,
        calls=len(events),
        new=new,
        repeated=scan.repeated,
        proxied=scan.proxied,
        unpriced=totals.unpriced,
        cost_usd=totals.cost_usd,
        sessions=totals.sessions,
        warnings=list(scan.warnings),
    )
