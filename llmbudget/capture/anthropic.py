"""Anthropic Messages wire protocol: usage from `message_start` plus the cumulative `message_delta`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..pricing import normalize
from .base import BadRequest, CallMeter, data_lines, output_limit, parse_json_body


class AnthropicMeter(CallMeter):
    """`/v1/messages`, streamed and not."""

    def scan_lines(self, block: bytes) -> None:
        if b'"message_start"' in block:
            for obj in data_lines(block, b'"message_start"'):
                msg = obj.get("message")
                if obj.get("type") == "message_start" and isinstance(msg, dict):
                    if isinstance(msg.get("model"), str):
                        self.model = msg["model"]
                    if isinstance(msg.get("usage"), dict):
                        self.raw_usage = dict(msg["usage"])
        if b'"message_delta"' in block:
            for obj in data_lines(block, b'"message_delta"'):
                if obj.get("type") == "message_delta" and isinstance(obj.get("usage"), dict):
                    # message_delta usage is cumulative: it replaces the fields it names
                    merged = dict(self.raw_usage or {})
                    merged.update({k: v for k, v in obj["usage"].items() if v is not None})
                    self.raw_usage = merged
        if b'"message_stop"' in block:
            self.complete = True
        if b'"error"' in block:
            for obj in data_lines(block, b'"error"'):
                err = obj.get("error")
                if obj.get("type") == "error" and isinstance(err, dict):
                    self.stream_error = str(err.get("message") or err.get("type") or "error in stream")

    def from_answer(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        if isinstance(data.get("usage"), dict):
            self.raw_usage = data["usage"]
        self.complete = True

    def usage(self) -> Any:
        if self.raw_usage is None:
            return None
        return normalize.anthropic_usage(self.raw_usage)


def make_meter(path: str, method: str, body: bytes, query: str = "") -> CallMeter | None:
    """A meter for `/v1/messages` (count_tokens and everything else pass through unmetered)."""
    if method != "POST" or not path.rstrip("/").endswith("/messages"):
        return None
    req = parse_json_body(body)
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    meter = AnthropicMeter(
        protocol="anthropic", endpoint="messages", request=req, body=body, request_model=model
    )
    meter.stream = req.get("stream") is True
    meter.max_output_tokens = output_limit(req, "max_tokens")
    meter.requested_tier = requested_tier(req)
    return meter


def requested_tier(request: Mapping[str, Any]) -> str | None:
    """Fast mode is billed at its own rates (usage reports `speed: fast`): reserved at them."""
    return "fast" if request.get("speed") == "fast" else None
