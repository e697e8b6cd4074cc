"""`llmbudget import FILE.jsonl`: load usage someone already logged into the ledger.

Two line shapes are accepted, one JSON object per line, told apart line by line:

- ours, as written by `UsageEvent.to_dict()`, the audit log and the JSON API (recognised by
  any of `input_tokens`, `output_tokens`, `price_status`, `provider`, `source`);
- the shape people already log::

      {"timestamp": "2026-03-01T12:00:00Z", "backend": "openai", "model": "gpt-4o",
       "prompt_tokens": 1200, "completion_tokens": 300, "cost_usd": 0.0042,
       "task_id": "T-17", "task_type": "code", "duration_ms": 850}

  `timestamp`, `backend` and `model` are required; `prompt_tokens` includes cached tokens and
  `completion_tokens` reasoning ones (OpenAI semantics); `agent`, `session`, `user`, `team`,
  `tier` and `provider` are taken when present, other keys are ignored. The event's `source` is
  `import`.

A given `cost_usd` is kept (`price_status: priced`); when it is absent the event is priced with
the price book at its own timestamp, and stays `unpriced` (never $0) when the model has no price.

Idempotence: a line without an `id` gets a deterministic one, a UUIDv5 of its bytes, so
re-importing a file adds nothing (two byte-identical lines count as one call). A bad line is
reported with its line number and the field at fault, and skipped; the rest is loaded.

CLI: `import` is one Typer command whose first argument is the SOURCE: a file path, or the name
of a known log format. `claude-code` is dispatched to the Claude Code importer
(`llmbudget import claude-code [PATH...]`); further formats are added to `cli.import_cmd.IMPORT_SOURCES`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

from .errors import LLMBudgetError, NotFound, ValidationError
from .events import ATTRIBUTION, MAX_TOKENS, UsageEvent, parse_timestamp
from .money import from_nano, to_nano, usd
from .pricing.book import PriceBook
from .store.base import Ledger

#: namespace of the ids derived from line content
ID_NAMESPACE = uuid.UUID("6f1d2c3e-8b7a-4c1e-9d0a-4c6c5b9f3a10")
_OURS_MARKERS = ("input_tokens", "output_tokens", "price_status", "provider", "source")

#: progress callback: (bytes read, file size)
Progress = Callable[[int, int], None]


class BadLineDict(TypedDict):
    line: int
    field: str | None
    message: str


class ImportResultDict(TypedDict):
    """One file's import as `llmbudget import --json` prints it."""

    path: str
    lines: int
    loaded: int
    duplicates: int
    bad_lines: int
    unpriced: int
    cost_usd: str | None
    cost_nano: int
    errors: list[BadLineDict]
    seconds: float


@dataclass(slots=True)
class BadLine:
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f" field {self.field}:" if self.field else ""
        return f"line {self.line}:{where} {self.message}"

    def to_dict(self) -> BadLineDict:
        return {"line": self.line, "field": self.field, "message": self.message}


@dataclass(slots=True)
class ImportResult:
    path: str
    lines: int = 0
    loaded: int = 0
    duplicates: int = 0
    unpriced: int = 0
    cost_nano: int = 0
    bad: list[BadLine] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> ImportResultDict:
        return {
            "path": self.path,
            "lines": self.lines,
            "loaded": self.loaded,
            "duplicates": self.duplicates,
            "bad_lines": len(self.bad),
            "unpriced": self.unpriced,
            # cost of the file's priced calls (duplicates included); unpriced ones are counted, never $0
            "cost_usd": None
            if self.unpriced == self.loaded + self.duplicates
            else format(from_nano(self.cost_nano), "f"),
            "cost_nano": self.cost_nano,
            "errors": [b.to_dict() for b in self.bad],
            "seconds": round(self.seconds, 3),
        }


def line_id(raw: bytes) -> str:
    """The deterministic id of a line without one."""
    return str(uuid.uuid5(ID_NAMESPACE, raw.strip().decode("utf-8", "replace")))


def _int_field(obj: dict[str, Any], name: str) -> int:
    v = obj.get(name)
    if v is None:
        return 0
    if isinstance(v, bool):
        raise ValidationError(name, f"must be an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if not isinstance(v, int):
        raise ValidationError(name, f"must be an integer, got {v!r}")
    if v < 0:
        raise ValidationError(name, f"must not be negative, got {v}")
    if v > MAX_TOKENS:
        raise ValidationError(name, f"{v} is beyond the bound of {MAX_TOKENS:,} tokens per call")
    return v


def _cost(obj: dict[str, Any], name: str = "cost_usd") -> Decimal | None:
    v = obj.get(name)
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise ValidationError(name, f"not a money amount: {v!r}")
    try:
        d = usd(v)
    except (ValueError, TypeError) as e:
        raise ValidationError(name, f"not a money amount: {v!r}") from e
    if not d.is_finite():
        raise ValidationError(name, f"not a money amount: {v!r}")
    if d < 0:
        raise ValidationError(name, f"must not be negative, got {v}")
    return from_nano(to_nano(d))


def _str_field(obj: dict[str, Any], name: str) -> str | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValidationError(name, f"must be a string, got {v!r}")
    return str(v)


def parse_logged(
    obj: dict[str, Any], raw: bytes, *, provider_of: Callable[[str, str], str] | None = None
) -> UsageEvent:
    """An event from the commonly logged shape; ValidationError names the field."""
    for name in ("timestamp", "backend", "model"):
        if obj.get(name) in (None, ""):
            raise ValidationError(name, "is required")
    ts = parse_timestamp(obj["timestamp"])
    backend = _str_field(obj, "backend") or ""
    model = _str_field(obj, "model") or ""
    inp = _int_field(obj, "prompt_tokens")
    out = _int_field(obj, "completion_tokens")
    cost = _cost(obj)
    dur = obj.get("duration_ms")
    if dur is not None and (isinstance(dur, bool) or not isinstance(dur, int | float) or dur < 0):
        raise ValidationError("duration_ms", f"must be a non-negative number, got {dur!r}")
    provider = _str_field(obj, "provider") or (provider_of(backend, model) if provider_of else "unknown")
    attribution = {k: _str_field(obj, k) for k in ATTRIBUTION}
    return UsageEvent(
        id=_str_field(obj, "id") or line_id(raw),
        timestamp=ts,
        backend=backend,
        model=model,
        provider=provider,
        input_tokens=inp,
        output_tokens=out,
        cost_usd=cost,
        price_status="priced" if cost is not None else "unpriced",
        duration_ms=None if dur is None else float(dur),
        source="import",
        agent=attribution["agent"],
        session=attribution["session"],
        user=attribution["user"],
        team=attribution["team"],
        task_id=attribution["task_id"],
        task_type=attribution["task_type"],
        tier=attribution["tier"],
    )


def parse_ours(obj: dict[str, Any], raw: bytes) -> UsageEvent:
    """An event in our own shape (`UsageEvent.to_dict()`); a missing id is derived from the line."""
    if not obj.get("id"):
        obj = {**obj, "id": line_id(raw)}
    return UsageEvent.from_dict(obj)


def parse_line(
    obj: dict[str, Any], raw: bytes, *, provider_of: Callable[[str, str], str] | None = None
) -> UsageEvent:
    """Either shape, chosen by the keys present."""
    if "prompt_tokens" not in obj and "completion_tokens" not in obj and any(k in obj for k in _OURS_MARKERS):
        return parse_ours(obj, raw)
    return parse_logged(obj, raw, provider_of=provider_of)


def import_jsonl(
    ledger: Ledger,
    path: str | Path,
    *,
    prices: PriceBook | None = None,
    provider_of: Callable[[str, str], str] | None = None,
    progress: Progress | None = None,
    batch: int = 5000,
) -> ImportResult:
    """Load a JSONL file into the ledger (idempotent). `prices` is a PriceBook used for lines without a cost."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"{p}: no such file")
    t0 = time.perf_counter()
    res = ImportResult(path=str(p))
    total = p.stat().st_size
    pending: list[UsageEvent] = []
    done = 0

    def write() -> None:
        new = ledger.record_many(pending)
        res.loaded += new
        res.duplicates += len(pending) - new
        pending.clear()

    seen: set[str] = set()
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            done += len(raw)
            if not raw.strip():
                continue
            res.lines += 1
            try:
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise ValidationError("json", f"not valid JSON ({e.__class__.__name__}: {e})") from None
                if not isinstance(obj, dict):
                    raise ValidationError("json", "not a JSON object")
                ev = parse_line(obj, raw, provider_of=provider_of)
                if ev.cost_usd is None and ev.price_status == "unpriced" and prices is not None:
                    ev = prices.price_event(ev)
            except ValidationError as e:
                res.bad.append(
                    BadLine(
                        lineno,
                        e.field if e.field not in ("json", "event") else None,
                        str(e).split(": ", 1)[1] if ": " in str(e) else str(e),
                    )
                )
                continue
            except LLMBudgetError as e:
                res.bad.append(BadLine(lineno, None, str(e)))
                continue
            if ev.id in seen:  # the same call twice in one file
                res.duplicates += 1
                continue
            seen.add(ev.id)
            if ev.cost_nano is None:
                res.unpriced += 1
            else:
                res.cost_nano += ev.cost_nano
            pending.append(ev)
            if len(pending) >= batch:
                write()
                if progress is not None:
                    progress(done, total)
    if pending:
        write()
    if progress is not None:
        progress(total, total)
    res.seconds = time.perf_counter() - t0
    return res
