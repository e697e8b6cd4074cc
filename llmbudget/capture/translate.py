"""Anthropic Messages <-> OpenAI chat completions, for falling back to an OpenAI-compatible local server.

When a cloud budget is exhausted, an Anthropic-protocol request is served by a local server
(Ollama, llama.cpp, vLLM) that speaks OpenAI chat: the request is translated (system prompt,
text/image/tool_use/tool_result blocks, tools, tool_choice, stop sequences, sampling), and the
answer translated back — a JSON message, or the Anthropic SSE event sequence built chunk by chunk
from the OpenAI stream as it arrives. Pure functions and a stream translator; the proxy adapter
`anthropic_to_openai_translator` plugs into `services.translators`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import aiohttp
from yarl import URL

from ..events import UsageEvent
from ..wire import ANTHROPIC, OPENAI, protocol_for
from .asgi import Send
from .proxy import Proxy
from .request import ProxyRequest

log = logging.getLogger("llmbudget.capture")

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ------------------------------------------------------------------------------------------ request


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    src = block.get("source") or {}
    if src.get("type") == "base64":
        return {
            "type": "image_url",
            "image_url": {"url": f"data:{src.get('media_type')};base64,{src.get('data')}"},
        }
    if src.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": src.get("url")}}
    return None


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat completions request."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for m in body.get("messages") or []:
        role, content = m.get("role"), m.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        tool_calls: list[dict[str, Any]] = []
        for block in content or []:
            kind = block.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image":
                img = _image_part(block)
                if img is not None:
                    parts.append(img)
            elif kind == "tool_use":
                tool_calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind == "tool_result":
                # each tool result is its own `tool` message, before any text of the same turn
                result = block.get("content")
                text = result if isinstance(result, str) else _text_of(result)
                if block.get("is_error"):
                    text = f"Error: {text}"
                messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            # thinking / redacted_thinking / documents: not understood by chat servers, dropped
        if role == "assistant":
            msg: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(p.get("text", "") for p in parts) or None,
            }
            if tool_calls:
                msg["tool_calls"] = tool_calls
            if msg["content"] is not None or tool_calls:
                messages.append(msg)
        elif parts:
            only_text = all(p["type"] == "text" for p in parts)
            messages.append(
                {"role": role, "content": "".join(p["text"] for p in parts) if only_text else parts}
            )
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
                },
            }
            for t in tools
            if t.get("name")
        ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        ctype = choice.get("type")
        if ctype == "auto":
            out["tool_choice"] = "auto"
        elif ctype == "any":
            out["tool_choice"] = "required"
        elif ctype == "none":
            out["tool_choice"] = "none"
        elif ctype == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# ------------------------------------------------------------------------------------------ response


def _tool_input(arguments: str | None) -> Any:
    try:
        return json.loads(arguments or "{}")
    except (ValueError, RecursionError):
        return {"_raw": arguments}  # a local model's broken JSON is passed on, not dropped


def openai_response_to_anthropic(resp: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic Messages response."""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tc.get("id") or f"toolu_{len(content)}",
                "name": fn.get("name"),
                "input": _tool_input(fn.get("arguments")),
            }
        )
    input_tokens, output_tokens = OPENAI.usage_counts(resp.get("usage") or {})
    return {
        "id": f"msg_{resp.get('id') or 'local'}",
        "type": "message",
        "role": "assistant",
        "model": resp.get("model") or model,
        "content": content,
        "stop_reason": _STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": ANTHROPIC.usage_object(input_tokens, output_tokens),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class StreamTranslator:
    """OpenAI chat SSE in, Anthropic Messages SSE out, chunk by chunk (nothing is buffered past a line)."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self._buf = b""
        self._started = False
        self._block: int = -1
        self._block_kind: str | None = None
        self._tools: dict[int, int] = {}  # OpenAI tool index -> Anthropic block index
        self._stop: str | None = None
        self._usage = {"input_tokens": 0, "output_tokens": 0}
        self.done = False

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        return _event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{chunk.get('id') or 'local'}",
                    "type": "message",
                    "role": "assistant",
                    "model": chunk.get("model") or self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        )

    def _close_block(self) -> bytes:
        if self._block_kind is None:
            return b""
        self._block_kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._block += 1
        self._block_kind = kind
        return out + _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._block, "content_block": block},
        )

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self._started else self._start(chunk)
        if chunk.get("usage"):
            self._usage = ANTHROPIC.usage_object(*OPENAI.usage_counts(chunk["usage"]))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._block_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += _event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self._block,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            for tc in delta.get("tool_calls") or []:
                idx = int(tc.get("index", 0))
                fn = tc.get("function") or {}
                if idx not in self._tools:
                    out += self._open(
                        f"tool{idx}",
                        {
                            "type": "tool_use",
                            "id": tc.get("id") or f"toolu_{idx}",
                            "name": fn.get("name"),
                            "input": {},
                        },
                    )
                    self._tools[idx] = self._block
                if fn.get("arguments"):
                    out += _event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": self._tools[idx],
                            "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]},
                        },
                    )
            if choice.get("finish_reason"):
                self._stop = _STOP.get(choice["finish_reason"], "end_turn")
        return out

    def feed(self, data: bytes) -> bytes:
        """Translate whatever complete SSE lines `data` finishes."""
        self._buf += data
        out = b""
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                out += self.finish()
                continue
            try:
                chunk = json.loads(payload)
            except (ValueError, RecursionError):
                continue
            if isinstance(chunk, dict):
                out += self._chunk(chunk)
        return out

    def finish(self) -> bytes:
        """The closing events (once): last block stop, message_delta with stop reason and usage, message_stop."""
        if self.done:
            return b""
        self.done = True
        out = b"" if self._started else self._start({})
        out += self._close_block()
        out += _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop or "end_turn", "stop_sequence": None},
                "usage": {
                    "output_tokens": self._usage["output_tokens"],
                    "input_tokens": self._usage["input_tokens"],
                },
            },
        )
        return out + _event("message_stop", {"type": "message_stop"})


# ------------------------------------------------------------------------------------------ proxy adapter


async def anthropic_to_openai_translator(
    proxy: Proxy, req: ProxyRequest, target: str, send: Send
) -> UsageEvent | None:
    """Serve an Anthropic-protocol request on an OpenAI-compatible backend; returns the recorded event."""
    backend = proxy.backends[target]
    meter = req.meter
    try:
        body = json.loads(req.body)
    except (ValueError, RecursionError):
        body = {}
    oai = anthropic_request_to_openai(body)
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if backend.api_key_env and os.environ.get(backend.api_key_env):
        target_protocol = protocol_for(backend.kind)
        headers[target_protocol.upstream_key_header] = (
            target_protocol.upstream_key_scheme + os.environ[backend.api_key_env]
        )
    base = backend.base_url if backend.base_url.endswith("/v1") else backend.base_url + "/v1"
    out_headers = [(b"x-llmbudget-request-id", req.event_id.encode())]
    if req.notice:
        out_headers.append(
            (b"x-llmbudget-notice", req.notice.replace("\n", " ").encode("latin-1", "replace"))
        )
    started = time.perf_counter()

    async def fail(status: int, message: str) -> UsageEvent | None:
        err = req.proto.error_bytes(status, message, "upstream_unreachable")
        event = await proxy.record_call(req, target, http_status=status, status="error", interrupted=False)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *out_headers],
            }
        )
        await send({"type": "http.response.body", "body": err})
        return event

    assert proxy.session is not None
    try:
        resp = await proxy.session.post(
            URL(base + "/chat/completions"),
            data=json.dumps(oai).encode(),
            headers=headers,
            timeout=proxy._timeouts[target],
        )
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        log.warning("fallback_connect_failed backend=%s error=%s", target, type(e).__name__)
        return await fail(502, f"llmbudget could not reach fallback backend {target!r} ({type(e).__name__})")
    try:
        if resp.status >= 400:
            text = (await resp.read()).decode("utf-8", "replace")[:500]
            return await fail(resp.status, f"fallback backend {target!r} answered {resp.status}: {text}")
        if not oai.get("stream"):
            data = await resp.json(content_type=None)
            answer = json.dumps(openai_response_to_anthropic(data, oai.get("model"))).encode()
            if meter is not None:
                meter.read_body(answer)
            event = await proxy.record_call(
                req, target, http_status=200, status="fallback", interrupted=False
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(answer)).encode()),
                        *out_headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": answer})
        else:
            tr = StreamTranslator(oai.get("model"))
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                        *out_headers,
                    ],
                }
            )
            interrupted = False
            ttft = None
            try:
                async for chunk in resp.content.iter_any():
                    piece = tr.feed(chunk)
                    if piece:
                        if ttft is None:
                            ttft = (time.perf_counter() - started) * 1000.0
                        if meter is not None:
                            meter.feed(piece)
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
            except (aiohttp.ClientError, TimeoutError, OSError):
                interrupted = True
            tail = b"" if interrupted else tr.finish()
            if meter is not None:
                meter.feed(tail)
                meter.end()
            event = await proxy.record_call(
                req,
                target,
                http_status=200,
                status="interrupted" if interrupted else "fallback",
                interrupted=interrupted,
                ttft_ms=ttft,
            )
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        return event
    finally:
        resp.release()
