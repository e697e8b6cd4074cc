"""What every wire protocol's meter shares: the per-call state, incremental stream scanning, estimates.

A `CallMeter` is created per metered call from the request body. It may rewrite the body (OpenAI's
`stream_options.include_usage`), then watches the answer: `feed()` for each streamed chunk (returning
the bytes to pass on, normally the very same object), `read_body()` for a buffered answer, and
`usage()` at the end. Scanning is by regular expressions over whole chunks (C speed) and a JSON parse
only of the few lines that carry usage, so a stream costs tens of microseconds to meter.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

#: request keys whose string values are not text the model reads (ids, enums, base64 payloads)
_SKIP_KEYS = frozenset(
    {
        "model",
        "role",
        "type",
        "id",
        "tool_call_id",
        "tool_use_id",
        "data",
        "url",
        "image_url",
        "mime_type",
        "mimeType",
        "media_type",
        "inline_data",
        "inlineData",
        "source",
        "signature",
        "cache_control",
        "stream",
        "stream_options",
    }
)
#: tokens charged per message/part for framing (role markers and separators)
_PER_ITEM = 4

#: string values in streamed deltas that carry generated text (used only to estimate cut streams)
_TEXT_RE = re.compile(rb'"(?:content|text|thinking|partial_json|arguments|delta)"\s*:\s*"((?:[^"\\]|\\.)*)"')


class BadRequest(Exception):
    """The client's request cannot be metered as sent (not JSON, no model); answered in the protocol's shape."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request_error") -> None:
        self.status = status
        self.code = code
        super().__init__(message)


def estimate_tokens_from_json(data: Any) -> int:
    """Rough input tokens of a request: ceil(characters of its text / 4) plus 4 per message or part.

    Used to reserve budget before a call and to record input when a cut stream never reported usage.
    Images and other binary parts are not counted (their price is not in their size).
    """
    chars = 0
    items = 0
    stack: list[Any] = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            chars += len(v)
        elif isinstance(v, dict):
            items += 1
            for k, x in v.items():
                if k not in _SKIP_KEYS:
                    stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)
    return math.ceil(chars / 4) + _PER_ITEM * max(items - 1, 0)


def loads(data: bytes | str) -> Any:
    """`json.loads`, through orjson when it can (several times faster on the proxy's path).

    What orjson refuses but `json` reads (NaN, integers beyond 64 bits, lone surrogates, UTF-16
    bodies) goes to `json.loads`, so what parses and what is refused is exactly `json`'s.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest saying what is wrong."""
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        data = loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def dump_json_body(data: dict[str, Any]) -> bytes:
    """A request object back to compact JSON bytes; BadRequest when it is nested too deeply to write."""
    try:
        return json.dumps(data, separators=(",", ":")).encode()
    except RecursionError:
        raise BadRequest("request body is not valid JSON: nested too deeply") from None


def int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


#: the largest output limit a request may name: far above any model's, far below what breaks the
#: arithmetic of a reservation (1e38 is a client bug, answered 400 rather than reserved)
MAX_OUTPUT_LIMIT = 100_000_000
#: the most choices / candidates one request may ask for
MAX_CHOICES = 1000


def _whole(value: Any, field: str, low: int, high: int) -> int:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and (isinstance(value, int) or value.is_integer())
        and low <= value <= high
    )
    if not ok:
        raise BadRequest(f"{field}: must be a whole number from {low} to {high:,}, got {value!r}")
    return int(value)


def output_limit(req: dict[str, Any], *fields: str) -> int | None:
    """The request's output limit from the first of `fields` it sets; BadRequest naming an absurd one."""
    for f in fields:
        v = req.get(f)
        if v is not None:
            return _whole(v, f, 0, MAX_OUTPUT_LIMIT)
    return None


def choice_count(req: dict[str, Any], *fields: str) -> int:
    """How many outputs the request can produce (OpenAI `n`, `best_of`, Gemini `candidateCount`): the largest."""
    n = 1
    for f in fields:
        v = req.get(f)
        if v is not None:
            n = max(n, _whole(v, f, 1, MAX_CHOICES))
    return n


@dataclass(slots=True)
class CallMeter:
    """Per-call metering state. Subclasses (one per protocol and endpoint family) fill the hooks."""

    protocol: str
    endpoint: str
    request: dict[str, Any]
    body: bytes
    request_model: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    #: outputs the request can produce (n, best_of, candidateCount): the worst case is max_output x this
    choices: int = 1
    #: the service tier the request asks for (OpenAI `service_tier`, Anthropic `speed: fast`); None: standard
    requested_tier: str | None = None
    #: the model as the provider answered it
    model: str | None = None
    #: raw usage object(s) as the provider sent them; normalized by `usage()`
    raw_usage: dict[str, Any] | None = None
    #: characters of generated text seen in a stream (estimate for cut streams)
    out_chars: int = 0
    #: the provider reported an error inside a 200 stream
    stream_error: str | None = None
    #: the stream ended with its protocol's terminator (not cut)
    complete: bool = False
    _carry: bytes = b""
    _est_input: int | None = field(default=None)

    # ---------------------------------------------------------------- request side
    def est_input_tokens(self) -> int:
        """Estimated input tokens of the request (computed once, lazily)."""
        if self._est_input is None:
            self._est_input = estimate_tokens_from_json(self.request)
        return self._est_input

    def set_model(self, model: str) -> bytes:
        """Replace the requested model (fallback); returns the new body."""
        self.request["model"] = model
        self.request_model = model
        self.body = dump_json_body(self.request)
        return self.body

    def upstream_path(self, path: str) -> str:
        """The path to send the request to after `set_model` (Gemini names the model in the path)."""
        return path

    # ---------------------------------------------------------------- answer side
    def feed(self, chunk: bytes) -> bytes:
        """Scan one streamed chunk; return the bytes to pass on (the same object unless filtering)."""
        for m in _TEXT_RE.findall(chunk):  # cheap; only used when a cut stream never reported usage
            self.out_chars += len(m)
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data[-65536:]  # a line longer than 64 KiB is text, never usage we need
            return chunk
        self._carry = data[cut + 1 :]
        self.scan_lines(data[:cut])
        return chunk

    def end(self) -> bytes:
        """The stream ended; scan what is left and return any bytes still held back."""
        if self._carry:
            self.scan_lines(self._carry)
            self._carry = b""
        return b""

    def scan_lines(self, block: bytes) -> None:
        """Look at complete lines of a stream (hook)."""

    def read_body(self, body: bytes) -> None:
        """Read a whole (non-streamed) answer body (hook)."""
        try:
            data = loads(body)
        except (ValueError, RecursionError):
            return
        if isinstance(data, dict):
            self.from_answer(data)

    def from_answer(self, data: dict[str, Any]) -> None:
        """Take model and usage from a parsed JSON answer (hook)."""

    def usage(self) -> Any:
        """Normalized `TokenUsage`, or None when the provider reported none (hook)."""
        return None

    def est_output_tokens(self) -> int:
        return math.ceil(self.out_chars / 4)


def data_lines(block: bytes, marker: bytes) -> list[dict[str, Any]]:
    """JSON objects of the SSE `data:` lines in `block` that contain `marker` (others are not parsed)."""
    if marker not in block:
        return []
    out = []
    for line in block.split(b"\n"):
        if marker in line and line.startswith(b"data:"):
            try:
                obj = loads(line[5:])
            except (ValueError, RecursionError):
                continue  # garbage from upstream: pass it on, meter what parses
            if isinstance(obj, dict):
                out.append(obj)
    return out


_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def first_model(block: bytes) -> str | None:
    m = _MODEL_RE.search(block)
    return m.group(1).decode("utf-8", "replace") if m else None
