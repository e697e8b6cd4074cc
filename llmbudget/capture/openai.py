"""OpenAI wire protocol (and every OpenAI-compatible server): chat completions, responses, completions, embeddings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..pricing import normalize
from .base import (
    _TEXT_RE,
    BadRequest,
    CallMeter,
    choice_count,
    data_lines,
    dump_json_body,
    first_model,
    loads,
    output_limit,
    parse_json_body,
)

_USAGE_OBJ = re.compile(rb'"usage"\s*:\s*\{')
_EVENT_END = re.compile(rb"\r?\n\r?\n")


def _normalize(endpoint: str, raw: dict[str, Any]) -> Any:
    if endpoint == "responses":
        return normalize.openai_responses_usage(raw)
    if endpoint == "embeddings":
        return normalize.openai_embeddings_usage(raw)
    return normalize.openai_chat_usage(raw)


class OpenAIMeter(CallMeter):
    """Chat completions, completions and embeddings (usage in the answer or the stream's final chunk)."""

    #: the client did not ask for usage in the stream: we did, so its usage-only chunk is removed
    hide_usage: bool = False
    _pending: bytes = b""
    #: the tier that served the call (`service_tier` of the answer: default, flex, priority, ...)
    served_tier: str | None = None
    #: web and file searches the answer reports (Responses API `web_search_call` / `file_search_call` items)
    web_searches: int = 0
    storage_searches: int = 0

    def scan_lines(self, block: bytes) -> None:
        if self.model is None:
            self.model = first_model(block)
        if _USAGE_OBJ.search(block):
            for obj in data_lines(block, b'"usage"'):
                if isinstance(obj.get("usage"), dict):
                    self.raw_usage = obj["usage"]
                    if isinstance(obj.get("model"), str):
                        self.model = obj["model"]
                    if isinstance(obj.get("service_tier"), str):
                        self.served_tier = obj["service_tier"]
        if b'"error"' in block:
            for obj in data_lines(block, b'"error"'):
                err = obj.get("error")
                if isinstance(err, dict) and "choices" not in obj:
                    self.stream_error = str(err.get("message") or "error in stream")
        if b"data: [DONE]" in block or b"data:[DONE]" in block:
            self.complete = True

    def feed(self, chunk: bytes) -> bytes:
        if not self.hide_usage:
            return CallMeter.feed(self, chunk)
        # Filtering mode: whole events pass on as soon as they are complete; only a partial event
        # (which no client could parse yet) is held until its end arrives.
        data = self._pending + chunk if self._pending else chunk
        last = None
        for last in _EVENT_END.finditer(data):  # noqa: B007 - want the last match
            pass
        if last is None:
            self._pending = data
            return b""
        out, self._pending = data[: last.end()], data[last.end() :]
        self.out_chars += _text_chars(out)
        self.scan_lines(out)
        if _USAGE_OBJ.search(out):
            out = _drop_usage_only_events(out)
        return out

    def end(self) -> bytes:
        if not self.hide_usage:
            return CallMeter.end(self)
        rest, self._pending = self._pending, b""
        if rest:
            self.scan_lines(rest)
            if _USAGE_OBJ.search(rest):
                rest = _drop_usage_only_events(rest)
        return rest

    def from_answer(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        if isinstance(data.get("usage"), dict):
            self.raw_usage = data["usage"]
        if isinstance(data.get("service_tier"), str):
            self.served_tier = data["service_tier"]
        self.complete = True

    def usage(self) -> Any:
        if self.raw_usage is None:
            return None
        u = _normalize(self.endpoint, self.raw_usage)
        if self.served_tier is None and not self.web_searches and not self.storage_searches:
            return u
        units = dict(u.units)
        if self.web_searches:
            units["web_searches"] = self.web_searches
        if self.storage_searches:
            units["storage_searches"] = self.storage_searches
        return u.with_counts(units=units, service_tier=self.served_tier or u.service_tier)


class ResponsesMeter(OpenAIMeter):
    """The Responses API: usage in the answer, or in `response.completed` (or incomplete/failed) when streamed."""

    def scan_lines(self, block: bytes) -> None:
        if self.model is None:
            self.model = first_model(block)
        if b'"response.' not in block and b'"error"' not in block:
            return
        for obj in data_lines(block, b'"type"'):
            kind = obj.get("type")
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                resp = obj.get("response")
                if isinstance(resp, dict):
                    self.from_answer(resp)
                if kind == "response.failed":
                    err = resp.get("error") if isinstance(resp, dict) else None
                    self.stream_error = str((err or {}).get("message") or "response failed")
            elif kind == "error":
                self.stream_error = str(obj.get("message") or "error in stream")

    def from_answer(self, data: dict[str, Any]) -> None:
        OpenAIMeter.from_answer(self, data)
        output = data.get("output")
        if isinstance(output, list):
            kinds = [item.get("type") for item in output if isinstance(item, dict)]
            self.web_searches = kinds.count("web_search_call")
            self.storage_searches = kinds.count("file_search_call")


def _text_chars(block: bytes) -> int:
    return sum(len(m) for m in _TEXT_RE.findall(block))


def _drop_usage_only_events(block: bytes) -> bytes:
    """Remove the `choices: []` chunk that carries only usage (the client never asked for it)."""
    parts = re.split(rb"(\r?\n\r?\n)", block)
    out: list[bytes] = []
    skip_sep = False
    for part in parts:
        if skip_sep and _EVENT_END.fullmatch(part):
            skip_sep = False
            continue
        skip_sep = False
        if _USAGE_OBJ.search(part):
            text = part.strip()
            if text.startswith(b"data:"):
                try:
                    obj = loads(text[5:])
                except (ValueError, RecursionError):
                    obj = None
                if isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict):
                    skip_sep = True
                    continue
        out.append(part)
    return b"".join(out)


def endpoint_for(path: str) -> str | None:
    """The metered endpoint a path names, None when it is not metered."""
    p = path.rstrip("/")
    if p.endswith("/chat/completions"):
        return "chat"
    if p.endswith("/responses"):
        return "responses"
    if p.endswith("/completions"):
        return "completions"
    if p.endswith("/embeddings"):
        return "embeddings"
    return None


def make_meter(path: str, method: str, body: bytes, query: str = "") -> CallMeter | None:
    """A meter for a metered OpenAI call (None: pass through unmetered); BadRequest on a broken body."""
    if method != "POST":
        return None
    endpoint = endpoint_for(path)
    if endpoint is None:
        return None
    req = parse_json_body(body)
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("missing required parameter: 'model'")
    cls = ResponsesMeter if endpoint == "responses" else OpenAIMeter
    meter = cls(protocol="openai", endpoint=endpoint, request=req, body=body, request_model=model)
    meter.stream = req.get("stream") is True and endpoint != "embeddings"
    meter.requested_tier = tier_of(req)
    if endpoint == "responses":
        meter.max_output_tokens = output_limit(req, "max_output_tokens")
    elif endpoint != "embeddings":
        meter.max_output_tokens = output_limit(req, "max_completion_tokens", "max_tokens")
        # completions' best_of generates that many server-side (all billed), returning n
        meter.choices = (
            choice_count(req, "n", "best_of") if endpoint == "completions" else choice_count(req, "n")
        )
    if meter.stream and endpoint in ("chat", "completions"):
        opts = req.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage") is True):
            # Ask for usage in the stream, then hide that extra chunk from a client that did not ask.
            req["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            meter.body = dump_json_body(req)
            assert isinstance(meter, OpenAIMeter)
            meter.hide_usage = True
    return meter


def requested_tier(value: Any) -> str | None:
    """The tier a request names in `service_tier`; `auto` and `default` are the standard prices."""
    if isinstance(value, str) and value.strip().lower() not in ("", "auto", "default"):
        return value.strip().lower()
    return None


def tier_of(request: Mapping[str, Any]) -> str | None:
    """The tier a request (or an SDK method's keywords) asks for in `service_tier`."""
    return requested_tier(request.get("service_tier"))
