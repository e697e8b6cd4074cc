"""Log records that cannot forge a line or carry a secret, whoever writes them.

`install()` (called by `llmbudget serve`) wraps the process's log record factory, so every
record of every logger (llmbudget's, uvicorn's, the `websockets` library's debug dump of a
handshake, anything a dependency adds later) passes through `clean()` once, when it is made:

- control characters are escaped (`\\r`, `\\n`, `\\x1b`...), so a value a client chose (a path, a
  header, a model name) can never start a new log line or rewrite the terminal;
- query strings are cut from anything that looks like a request target (uvicorn logs
  WebSocket upgrades as `"WebSocket /path?query" 403` even with its access log off, and a
  Gemini key travels as `?key=`), and the values of `key=`, `Authorization`, `x-api-key`,
  `x-goog-api-key`, cookies and `Bearer` tokens are replaced by `[redacted]`.

A traceback keeps its lines, each indented, so it cannot pass for a record of its own.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

REDACTED = "[redacted]"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: a request target or URL with a query: `/path?anything`, `https://host/path?anything`
_TARGET_QUERY = re.compile(r"(?P<path>(?:\b(?:https?|wss?)://|(?:^|(?<=[\s\"'(=]))/)[^\s\"'?]*)\?[^\s\"']*")
#: `key=...`-style parameters anywhere (a full URL, a form body, a message)
_PARAM = re.compile(
    r"(?i)(?P<name>\b(?:key|api[_-]?key|access[_-]?token|token|secret|password|sig|signature)=)[^&\s\"']+"
)
#: `Header: value` / `header=value` pairs of headers that carry credentials (a browser's Realtime
#: client puts its key in a subprotocol: `openai-insecure-api-key.<key>`)
_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:authorization|proxy-authorization|x-api-key|x-goog-api-key|api-key|"
    r"cookie|set-cookie|x-llmbudget-admin-token|sec-websocket-protocol)\b\s*[:=]\s*)[^\n]*"
)
_BEARER = re.compile(r"(?i)\b(?P<name>bearer\s+)[A-Za-z0-9._~+/=-]+")
#: loggers whose formatter reads `record.args` positionally (uvicorn's access formatter)
_ARGS_KEPT = frozenset({"uvicorn.access"})


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def redact(text: str) -> str:
    """`text` with query strings of request targets and credential values replaced by `[redacted]`."""
    if "?" in text:
        text = _TARGET_QUERY.sub(lambda m: f"{m['path']}?{REDACTED}", text)
    if "=" in text:
        text = _PARAM.sub(lambda m: m["name"] + REDACTED, text)
    if ":" in text or "=" in text:
        text = _HEADER.sub(lambda m: m["name"] + REDACTED, text)
    return _BEARER.sub(lambda m: m["name"] + REDACTED, text)


def clean(text: str) -> str:
    """One log line's worth of `text`: secrets redacted, control characters escaped."""
    return _escape(redact(text))


def _clean_arg(value: Any) -> Any:
    return (
        clean(value) if isinstance(value, str) else clean(repr(value)) if isinstance(value, bytes) else value
    )


def clean_record(record: logging.LogRecord) -> None:
    """Make `record` safe in place: its message (or, for positional formatters, its args) and traceback."""
    if record.name in _ARGS_KEPT and isinstance(record.args, tuple):
        record.args = tuple(_clean_arg(a) for a in record.args)
    else:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what there is, readable
            message = f"{record.msg!r} {record.args!r}"
        record.msg = clean(message)
        record.args = ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = "\n".join("    " + _escape(redact(line)) for line in text.split("\n"))
    if record.stack_info:
        record.stack_info = "\n".join("    " + _escape(line) for line in record.stack_info.split("\n"))


_installed = False


def install() -> None:
    """Pass every log record the process makes through `clean_record` (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        clean_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
