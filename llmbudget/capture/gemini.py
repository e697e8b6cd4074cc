"""Gemini wire protocol: `:generateContent` and `:streamGenerateContent` (`alt=sse` and the JSON-array form)."""

from __future__ import annotations

import json
import re
from typing import Any

from ..pricing import normalize
from .base import (
    _TEXT_RE,
    BadRequest,
    CallMeter,
    choice_count,
    data_lines,
    loads,
    output_limit,
    parse_json_body,
)

_PATH_RE = re.compile(
    r"^(?P<head>.*/models/)(?P<model>[^/:]*):(?P<method>generateContent|streamGenerateContent)$"
)
_MODEL_VERSION = re.compile(rb'"modelVersion"\s*:\s*"([^"\\]{1,200})"')
_USAGE_KEY = b'"usageMetadata"'
#: bytes of one chunk kept for the next: longer than `"finishReason"` and a whole `"modelVersion": "..."` pair (value up to 200)
_EDGE = 256


class GeminiMeter(CallMeter):
    """Gemini calls. Each streamed chunk repeats `usageMetadata`; the last one seen holds the totals."""

    path: str = ""
    #: the JSON-array stream (no `alt=sse`): parsed from a tail kept from the last usageMetadata on
    json_array: bool = False
    _tail: bytes = b""
    #: the end of the previous chunk, so a key or model name split across two chunks is still seen
    _edge: bytes = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.json_array:
            return CallMeter.feed(self, chunk)
        for m in _TEXT_RE.findall(chunk):
            self.out_chars += len(m)
        tail = self._tail + chunk
        i = tail.rfind(_USAGE_KEY)
        if i >= 0:
            tail = tail[i:]
        elif not self._tail.startswith(_USAGE_KEY):
            tail = tail[-(len(_USAGE_KEY) + 256) :]  # enough to catch a key split across chunks
        self._tail = tail
        window = self._edge + chunk
        for m in _MODEL_VERSION.finditer(window):
            self.model = m.group(1).decode("utf-8", "replace")
        if b'"finishReason"' in window:
            self.complete = True
        self._edge = window[-_EDGE:]
        return chunk

    def end(self) -> bytes:
        if not self.json_array:
            return CallMeter.end(self)
        if self._tail.startswith(_USAGE_KEY):
            text = self._tail.decode("utf-8", "replace")
            start = text.find("{")
            if start >= 0:
                try:
                    obj, _ = json.JSONDecoder().raw_decode(text, start)
                except (ValueError, RecursionError):
                    obj = None
                if isinstance(obj, dict):
                    self.raw_usage = obj
            m = _MODEL_VERSION.search(self._tail)
            if m:
                self.model = m.group(1).decode("utf-8", "replace")
        return b""

    def scan_lines(self, block: bytes) -> None:
        if _USAGE_KEY in block:
            for obj in data_lines(block, _USAGE_KEY):
                self.from_chunk(obj)
        elif b'"modelVersion"' in block:
            for m in _MODEL_VERSION.finditer(block):
                self.model = m.group(1).decode("utf-8", "replace")
        if b'"finishReason"' in block:
            self.complete = True
        if b'"error"' in block:
            for obj in data_lines(block, b'"error"'):
                err = obj.get("error")
                if isinstance(err, dict):
                    self.stream_error = str(err.get("message") or err.get("status") or "error in stream")

    def from_chunk(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("usageMetadata"), dict):
            self.raw_usage = obj["usageMetadata"]
        if isinstance(obj.get("modelVersion"), str):
            self.model = obj["modelVersion"]

    def read_body(self, body: bytes) -> None:
        try:
            data = loads(body)
        except (ValueError, RecursionError):
            return
        items = data if isinstance(data, list) else [data]  # streamGenerateContent without alt=sse, buffered
        for obj in items:
            if isinstance(obj, dict):
                self.from_chunk(obj)
        self.complete = True

    def set_model(self, model: str) -> bytes:
        m = _PATH_RE.match(self.path)
        if m:
            self.path = f"{m['head']}{model}:{m['method']}"
        self.request_model = model
        return self.body

    def upstream_path(self, path: str) -> str:
        return self.path or path

    def usage(self) -> Any:
        if self.raw_usage is None:
            return None

        return normalize.gemini_usage(self.raw_usage)


def make_meter(path: str, method: str, body: bytes, query: str = "") -> CallMeter | None:
    """A meter for generateContent / streamGenerateContent; other paths pass through unmetered."""
    if method != "POST":
        return None
    # a trailing slash is the same endpoint to a lenient upstream: meter it, as OpenAI and Anthropic do
    m = _PATH_RE.match(path.rstrip("/"))
    if m is None:
        return None
    req = parse_json_body(body)
    model = m["model"]
    if not model:
        raise BadRequest("model is missing from the path", code="INVALID_ARGUMENT")
    meter = GeminiMeter(protocol="gemini", endpoint=m["method"], request=req, body=body, request_model=model)
    meter.path = path
    meter.stream = m["method"] == "streamGenerateContent"
    meter.json_array = meter.stream and "alt=sse" not in query
    gen = req.get("generationConfig")
    if isinstance(gen, dict):
        try:
            meter.max_output_tokens = output_limit(gen, "maxOutputTokens")
            meter.choices = choice_count(gen, "candidateCount")
        except BadRequest as e:
            raise BadRequest(f"generationConfig.{e}", code="INVALID_ARGUMENT") from None
    return meter
