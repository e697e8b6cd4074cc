"""Is a 200 answer its protocol? Checks on the bytes an upstream streams, before they reach the client.

An upstream (or a box in front of it: a captive portal, a misconfigured gateway) can answer 200
with something that is not the protocol at all: an HTML page, garbage bytes, JSON cut in the
middle of a line. Passed on, a client would take it as a (strange) success. `StreamGuard` looks
at whole lines as they pass and stops at the first one that is not the protocol; the proxy then
ends the stream with the protocol's own error event and records the call `status: error` with
the reason.

What is checked is the shape, never the meaning (that would cost a JSON parse per event):

- SSE (OpenAI, Anthropic, Gemini `alt=sse`): every line is blank, a comment (`:`), `event:`,
  `id:`, `retry:`, or `data:` carrying a JSON object (`{...}`) or OpenAI's `[DONE]`; no control
  characters; the stream does not end inside a line.
- Gemini's JSON-array stream: it starts with `[`, ends with `]`, has no control characters.

Only whole lines are passed on, so a broken line never reaches the client; a line still arriving
is held until its end (upstreams write whole events, so this delays nothing in practice).
"""

from __future__ import annotations

import re

#: a line that is not one of SSE's fields (or a `data:` line that is not a JSON object)
_BAD_SSE_LINE = re.compile(
    rb"^(?!(?:data: ?(?:\{.*\}|\[DONE\])[ \t]*|event:.*|id:.*|retry:.*|:.*|[ \t]*)\r?$).*$",
    re.MULTILINE,
)
#: bytes JSON and SSE never carry raw (tab, CR and LF aside)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: the longest line held while it arrives (a Gemini event can carry a large inline image)
MAX_LINE = 16 * 1024 * 1024
_SHOWN = 40


def _show(line: bytes) -> str:
    text = line[:_SHOWN].decode("utf-8", "replace")
    return repr(text + ("..." if len(line) > _SHOWN else ""))


def event_stream_type(ctype: str) -> bool:
    """True when a Content-Type header says server-sent events."""
    return ctype.split(";", 1)[0].strip().lower() == "text/event-stream"


class StreamGuard:
    """Checks one streamed answer. `check()` each chunk, then `end()`; both return (bytes to pass, reason)."""

    __slots__ = ("_carry", "_last", "_started", "json_array")

    def __init__(self, *, json_array: bool = False) -> None:
        self.json_array = json_array
        self._carry = b""
        #: JSON-array form: the opening `[` was seen
        self._started = False
        #: JSON-array form: the last byte that was not whitespace
        self._last = b""

    @staticmethod
    def content_type_problem(ctype: str, *, json_array: bool) -> str | None:
        """Why a 200 stream's Content-Type is not its protocol's (None when it is)."""
        if json_array:
            kind = ctype.split(";", 1)[0].strip().lower()
            if kind in ("application/json", "text/json"):
                return None
            return f"answered 200 with Content-Type {ctype or '(none)'!r}, not a JSON stream"
        if event_stream_type(ctype):
            return None
        return f"answered 200 with Content-Type {ctype or '(none)'!r}, not an event stream"

    @property
    def started(self) -> bool:
        """JSON-array form: whether the array's opening `[` went out."""
        return self._started

    def check(self, chunk: bytes) -> tuple[bytes, str | None]:
        """The whole, valid lines of what has arrived, and the reason the stream is broken (or None)."""
        if self.json_array:
            return self._check_array(chunk)
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            if len(data) > MAX_LINE:
                return b"", f"sent a line longer than {MAX_LINE} bytes"
            return b"", None
        whole = data[: cut + 1]
        self._carry = data[cut + 1 :]
        return self._lines(whole)

    def end(self) -> tuple[bytes, str | None]:
        """The stream ended: what is still held, and whether the stream ended broken."""
        if self.json_array:
            if not self._started:
                return b"", "ended without sending anything"
            if self._last != b"]":
                return b"", "ended inside the JSON array (truncated)"
            return b"", None
        rest, self._carry = self._carry, b""
        if not rest.strip():
            return rest, None
        if rest.startswith(b"data:"):
            payload = rest[5:].strip()
            if not (payload.startswith(b"{") and payload.endswith(b"}")) and payload != b"[DONE]":
                return b"", f"ended inside an event (truncated: {_show(rest)})"
        return self._lines(rest)

    def _lines(self, block: bytes) -> tuple[bytes, str | None]:
        """`block` (whole lines) up to its first line that is not the protocol, and why it is not."""
        at: int | None = None
        reason = "sent a line that is not server-sent events"
        line = _BAD_SSE_LINE.search(block)
        if line is not None:
            at = line.start()
        ctrl = _CONTROL.search(block, 0, len(block) if at is None else at)
        if ctrl is not None:
            at = block.rfind(b"\n", 0, ctrl.start()) + 1
            reason = "sent bytes that are not text"
        if at is None:
            return block, None
        stop = block.find(b"\n", at)
        return block[:at], f"{reason}: {_show(block[at : stop if stop >= 0 else len(block)])}"

    def _check_array(self, chunk: bytes) -> tuple[bytes, str | None]:
        if _CONTROL.search(chunk):
            return b"", "sent bytes that are not JSON"
        text = chunk.strip()
        if not text:
            return chunk, None
        if not self._started:
            if not text.startswith(b"["):
                return b"", f"sent {_show(text)} where a JSON array should start"
            self._started = True
        self._last = text[-1:]
        return chunk, None
