"""The proxy's own error answers, in the wire protocol's error shape so SDKs raise their normal exceptions.

The shapes are the protocols' own (`WireProtocol.error_body`, `llmbudget/wire.py`); these take a
protocol by its name for callers that hold only a backend's `kind`.
"""

from __future__ import annotations

from typing import Any

from ..wire import guess_protocol as _guess
from ..wire import protocol_for


def error_payload(protocol: str, status: int, message: str, code: str = "llmbudget_error") -> dict[str, Any]:
    """The error body for `protocol` (openai | anthropic | gemini; OpenAI's for anything else)."""
    return protocol_for(protocol).error_body(status, message, code)


def error_bytes(protocol: str, status: int, message: str, code: str = "llmbudget_error") -> bytes:
    return protocol_for(protocol).error_bytes(status, message, code)


def guess_protocol(path: str) -> str:
    """The name of the protocol a path most likely speaks (for errors on requests that matched no backend)."""
    return _guess(path).name
