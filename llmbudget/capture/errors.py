"""The proxy's own error answers, in the wire protocol's error shape so SDKs raise their normal exceptions."""

from __future__ import annotations

import json
from typing import Any

from . import anthropic, gemini, openai

_SHAPES = {"openai": openai.error_body, "anthropic": anthropic.error_body, "gemini": gemini.error_body}


def error_payload(protocol: str, status: int, message: str, code: str = "llmbudget_error") -> dict[str, Any]:
    """The error body for `protocol` (openai | anthropic | gemini)."""
    return _SHAPES.get(protocol, openai.error_body)(status, message, code)


def error_bytes(protocol: str, status: int, message: str, code: str = "llmbudget_error") -> bytes:
    return json.dumps(error_payload(protocol, status, message, code)).encode()


def guess_protocol(path: str) -> str:
    """The protocol a path most likely speaks (for errors on requests that matched no backend)."""
    if ":generateContent" in path or ":streamGenerateContent" in path or "/v1beta/" in path:
        return "gemini"
    if path.rstrip("/").endswith(("/messages", "/messages/count_tokens")):
        return "anthropic"
    return "openai"
