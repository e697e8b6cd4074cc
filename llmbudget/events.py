"""UsageEvent: the one record of an LLM call that everything else reads."""

from __future__ import annotations

import random
import re
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .attribution_table import CLIENT_TEXT
from .errors import ValidationError
from .money import decimal_str, from_nano, to_nano

PRICE_STATUSES = frozenset({"priced", "unpriced", "local", "override"})
STATUSES = frozenset({"ok", "error", "interrupted", "blocked", "fallback"})
SOURCES = frozenset({"proxy", "sdk", "import", "api"})
#: the text attribution fields a caller sets, in the order reports show them (`attribution_table`)
ATTRIBUTION = CLIENT_TEXT
TOKEN_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
)
#: other priced units an event may carry in `units` (genai-prices usage keys). Modality tokens are
#: parts of the input (or output) totals, cache reads by modality parts of the cached input.
UNIT_KEYS = frozenset(
    {
        "input_audio_tokens",
        "input_image_tokens",
        "input_video_tokens",
        "output_audio_tokens",
        "output_image_tokens",
        "output_video_tokens",
        "cache_audio_read_tokens",
        "cache_image_read_tokens",
        "cache_video_read_tokens",
        "web_searches",
        "storage_searches",
    }
)
#: the most tokens one call may count (a million times any context window; sums of millions fit int64)
MAX_TOKENS = 10**12
#: the most one call may cost: $1,000,000 is 10**15 nano-USD, so sums of thousands fit int64
MAX_COST_USD = Decimal(10**6)
#: the longest text field (id, attribution, model, tag key or value, reason), in characters
MAX_TEXT = 4096
#: at most this many tags per event
MAX_TAGS = 64
#: durations longer than a year (in ms) are not a call's
MAX_DURATION_MS = 365 * 24 * 3600 * 1000.0
#: text fields checked for NUL bytes, length and encodability
TEXT_FIELDS = (
    "id",
    "backend",
    "model",
    "provider",
    "request_model",
    "agent",
    "session",
    "user",
    "team",
    "task_id",
    "task_type",
    "tier",
    "key",
    "reason",
)

_last_ms = 0
_seq = 0
#: ids need uniqueness, not secrecy: the module PRNG (seeded from urandom) is far cheaper than two
#: urandom syscalls per id on the proxy's hot path. It must be the module-level one: Python reseeds
#: it in a forked child, so forked workers never draw the same ids (a private Random() would not be).
_getrandbits = random.getrandbits


def new_id() -> str:
    """A UUIDv7 string: time-ordered, unique, usable as the idempotency key."""
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:  # same millisecond: keep ids monotonic within the process
        ms = _last_ms
        _seq += 1
    else:
        _last_ms, _seq = ms, _getrandbits(10)
    rand_a = _seq & 0xFFF
    rand_b = _getrandbits(62)
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: namespace of event ids derived from an Anthropic `request-id` (proxy and Claude Code import agree)
_ANTHROPIC_CALL_NS = uuid.UUID("5d1b7c52-0c4e-4f0b-9a51-616e7468726f")
_REQUEST_ID_RE = re.compile(r"^req_[A-Za-z0-9]{8,128}$")


def anthropic_call_id(request_id: str | None) -> str | None:
    """The event id of the Anthropic API call with this `request-id` (`req_...`), or None.

    Anthropic gives every call a unique request id, sent as the `request-id` response header and
    logged by Claude Code as `requestId`. The proxy and the Claude Code importer both derive the
    event id from it, so the ledger's idempotency on `id` stores a call seen both ways once.
    Anything not shaped like Anthropic's ids (a gateway's own) is not trusted: None.
    """
    if not request_id or not _REQUEST_ID_RE.match(request_id):
        return None
    return str(uuid.uuid5(_ANTHROPIC_CALL_NS, request_id))


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def parse_timestamp(value: str | datetime | int | float) -> datetime:
    """Parse RFC 3339 / ISO 8601 (a trailing Z allowed) or unix seconds into aware UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        dt = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        s = value.strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError as e:
            raise ValidationError("timestamp", f"not an RFC 3339 time: {value!r}") from e
    else:
        raise ValidationError("timestamp", f"not a time: {value!r}")
    if dt.tzinfo is None:  # naive times in logs are UTC by convention
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


@dataclass(slots=True)
class UsageEvent:
    """One LLM call. Token counts: input includes cached, output includes reasoning."""

    backend: str
    model: str
    id: str = field(default_factory=new_id)
    timestamp: datetime = field(default_factory=utcnow)
    provider: str = "unknown"
    request_model: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    #: None means not priced (unpriced); never reported as $0
    cost_usd: Decimal | None = None
    price_status: str = "unpriced"
    agent: str | None = None
    session: str | None = None
    user: str | None = None
    team: str | None = None
    task_id: str | None = None
    task_type: str | None = None
    tier: str | None = None
    #: the virtual key's name the call was made with (never the secret)
    key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    http_status: int | None = None
    streamed: bool = False
    duration_ms: float | None = None
    ttft_ms: float | None = None
    source: str = "api"
    #: the part of cache_write_tokens written with a one-hour TTL (priced apart by Anthropic)
    cache_write_1h_tokens: int = 0
    #: the tier that served the call, as the provider reported it (OpenAI `flex`, `priority`, ...)
    service_tier: str | None = None
    #: other priced units the provider reported, by genai-prices usage key (see UNIT_KEYS)
    units: dict[str, int] = field(default_factory=dict)
    #: why a recorded value is not what was reported (e.g. an absurd token count replaced), else None
    reason: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValidationError naming the first bad field."""
        if not self.backend or not isinstance(self.backend, str):
            raise ValidationError("backend", "must be a non-empty string")
        if not isinstance(self.model, str):
            raise ValidationError("model", "must be a string")
        for name in TEXT_FIELDS:
            v = getattr(self, name)
            # the usual value (short ASCII text without NUL) passes with four cheap checks
            if v is not None and (type(v) is not str or len(v) > MAX_TEXT or not v.isascii() or "\x00" in v):
                _check_text(name, v)
        for name in TOKEN_FIELDS:
            v = getattr(self, name)
            if type(v) is int and 0 <= v <= MAX_TOKENS:
                continue
            if type(v) is not int and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValidationError(name, f"must be an integer, got {v!r}")
            if v < 0:
                raise ValidationError(name, f"must not be negative, got {v}")
            if v > MAX_TOKENS:
                raise ValidationError(
                    name, f"{_short(v)} is beyond the bound of {MAX_TOKENS:,} tokens per call"
                )
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValidationError(
                "cached_input_tokens",
                f"cached ({self.cached_input_tokens}) + cache write ({self.cache_write_tokens}) "
                f"exceeds input_tokens ({self.input_tokens}); input_tokens must include cached tokens",
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValidationError(
                "cache_write_1h_tokens",
                f"{self.cache_write_1h_tokens} exceeds cache_write_tokens ({self.cache_write_tokens}); "
                "cache_write_tokens must include the one-hour writes",
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValidationError(
                "reasoning_tokens",
                f"{self.reasoning_tokens} exceeds output_tokens ({self.output_tokens}); "
                "output_tokens must include reasoning tokens",
            )
        if self.status not in STATUSES:
            raise ValidationError("status", f"unknown status {self.status!r}; one of {sorted(STATUSES)}")
        if self.price_status not in PRICE_STATUSES:
            raise ValidationError(
                "price_status", f"unknown price status {self.price_status!r}; one of {sorted(PRICE_STATUSES)}"
            )
        if self.source not in SOURCES:
            raise ValidationError("source", f"unknown source {self.source!r}; one of {sorted(SOURCES)}")
        if self.cost_usd is not None:
            if not isinstance(self.cost_usd, Decimal):
                raise ValidationError("cost_usd", f"must be a Decimal, got {type(self.cost_usd).__name__}")
            if not self.cost_usd.is_finite():
                raise ValidationError("cost_usd", f"must be a finite number, got {self.cost_usd}")
            if self.cost_usd < 0:
                raise ValidationError("cost_usd", f"must not be negative, got {self.cost_usd}")
            if self.cost_usd > MAX_COST_USD:
                raise ValidationError(
                    "cost_usd", f"{_short(self.cost_usd)} is beyond the bound of ${MAX_COST_USD:,} per call"
                )
        elif self.price_status in ("priced", "override"):
            raise ValidationError("cost_usd", f"is missing but price_status is {self.price_status!r}")
        if self.timestamp.tzinfo is None:
            raise ValidationError("timestamp", "must be timezone-aware")
        if not isinstance(self.tags, dict):
            raise ValidationError("tags", "must be a mapping of strings")
        if self.service_tier is not None and (
            not isinstance(self.service_tier, str)
            or not self.service_tier
            or len(self.service_tier) > 64
            or "\x00" in self.service_tier
        ):
            raise ValidationError(
                "service_tier", f"must be a short string or null, got {self.service_tier!r}"
            )
        if not isinstance(self.units, dict):
            raise ValidationError("units", "must be a mapping of unit names to counts")
        if self.units:
            for k, v in self.units.items():
                if k not in UNIT_KEYS:
                    raise ValidationError("units", f"unknown unit {k!r}; one of {sorted(UNIT_KEYS)}")
                if type(v) is not int or v < 0:
                    raise ValidationError("units", f"{k} must be a non-negative integer, got {_short(v)}")
                if v > MAX_TOKENS:
                    raise ValidationError("units", f"{k}: {_short(v)} is beyond the bound of {MAX_TOKENS:,}")
        if self.tags:
            if len(self.tags) > MAX_TAGS:
                raise ValidationError("tags", f"{len(self.tags)} tags; at most {MAX_TAGS}")
            for k, v in self.tags.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise ValidationError("tags", f"must map strings to strings, got {k!r}: {v!r}")
                _check_text("tags", k)
                _check_text("tags", v)
        h = self.http_status
        if h is not None and (type(h) is not int or not 0 <= h <= 999):
            raise ValidationError("http_status", f"must be an HTTP status code (0-999), got {_short(h)}")
        for name in ("duration_ms", "ttft_ms"):
            d = getattr(self, name)
            if d is not None and (
                isinstance(d, bool)
                or not isinstance(d, int | float)
                or not 0 <= d <= MAX_DURATION_MS  # also false for NaN
            ):
                raise ValidationError(name, f"must be a duration in ms between 0 and a year, got {_short(d)}")

    @property
    def cost_nano(self) -> int | None:
        """Cost in integer nano-USD, or None when unpriced."""
        return None if self.cost_usd is None else to_nano(self.cost_usd)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def with_(self, **changes: Any) -> UsageEvent:
        """A validated copy with some fields changed (events are immutable once recorded)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: RFC 3339 timestamp, cost as a decimal string (exact) under `cost_usd`."""
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["timestamp"] = self.timestamp.isoformat().replace("+00:00", "Z")
        d["cost_usd"] = None if self.cost_usd is None else decimal_str(self.cost_usd)
        d["tags"] = dict(self.tags)
        d["units"] = dict(self.units)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageEvent:
        """Build from our own JSON shape (as written by `to_dict`, the audit log and the API)."""
        known = {f.name for f in fields(cls)}
        # cost_nano and total_tokens are derived; `ledger` is the audit log's tag of its database
        unknown = set(data) - known - {"cost_nano", "total_tokens", "ledger"}
        if unknown:
            raise ValidationError(sorted(unknown)[0], "unknown field")
        kw = {k: v for k, v in data.items() if k in known}
        if "timestamp" in kw and kw["timestamp"] is not None:
            kw["timestamp"] = parse_timestamp(kw["timestamp"])
        if kw.get("cost_usd") is not None:
            kw["cost_usd"] = _decimal("cost_usd", kw["cost_usd"])
        elif data.get("cost_nano") is not None:
            kw["cost_usd"] = from_nano(int(data["cost_nano"]))
        if kw.get("tags") is None:
            kw.pop("tags", None)
        if kw.get("units") is None:
            kw.pop("units", None)
        for name in TOKEN_FIELDS:
            if kw.get(name) is None:
                kw.pop(name, None)
        for key in ("backend", "model"):
            if key not in kw:
                raise ValidationError(key, "is required")
        try:
            return cls(**kw)
        except TypeError as e:
            raise ValidationError("event", str(e)) from e


def _short(v: Any) -> str:
    """A value for an error message, cut short (an absurd number can have thousands of digits)."""
    text = repr(v) if not isinstance(v, int | Decimal) else str(v)
    return text if len(text) <= 40 else text[:20] + f"... ({len(text)} characters)"


def _check_text(name: str, v: Any) -> None:
    if not isinstance(v, str):
        raise ValidationError(name, f"must be a string, got {type(v).__name__}")
    if len(v) > MAX_TEXT:
        raise ValidationError(name, f"is {len(v):,} characters long; at most {MAX_TEXT:,}")
    if "\x00" in v:
        raise ValidationError(name, "contains a NUL byte")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValidationError(name, f"is not valid Unicode text ({e.reason})") from None


def _decimal(name: str, value: Any) -> Decimal:
    if isinstance(value, float):
        value = repr(value)
    try:
        return Decimal(value)
    except Exception as e:
        raise ValidationError(name, f"not a number: {value!r}") from e
