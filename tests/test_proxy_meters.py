"""The protocol meters on their own: any split of a stream into chunks gives the same usage and bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import upstream as fx
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbudget.capture import anthropic, gemini, openai
from llmbudget.capture.base import BadRequest, CallMeter, estimate_tokens_from_json
from llmbudget.capture.proxy import parse_tags
from llmbudget.pricing import normalize


def _sse(obj: Any, event: str | None = None) -> bytes:
    return (f"event: {event}\n" if event else "").encode() + b"data: " + json.dumps(obj).encode() + b"\n\n"


def openai_stream(include_usage: bool) -> bytes:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": fx.OPENAI_CHAT_MODEL}
    extra = {"usage": None} if include_usage else {}
    out = [
        _sse({**base, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}], **extra})
        for t in fx.TEXT
    ]
    if include_usage:
        out.append(_sse({**base, "choices": [], "usage": fx.OPENAI_CHAT_USAGE}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


ANTHROPIC_STREAM = b"".join(
    [
        _sse(
            {
                "type": "message_start",
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": fx.ANTHROPIC_MODEL,
                    "usage": {**fx.ANTHROPIC_USAGE, "output_tokens": 1},
                },
            },
            "message_start",
        ),
        *[
            _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
                "content_block_delta",
            )
            for t in fx.TEXT
        ],
        _sse(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 50}},
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
)


def gemini_parts() -> list[dict[str, Any]]:
    parts = []
    for i, t in enumerate(fx.TEXT):
        last = i == len(fx.TEXT) - 1
        usage = fx.GEMINI_USAGE if last else {"promptTokenCount": 1500, "totalTokenCount": 1500}
        cand: dict[str, Any] = {"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}
        if last:
            cand["finishReason"] = "STOP"
        parts.append({"candidates": [cand], "usageMetadata": usage, "modelVersion": fx.GEMINI_MODEL})
    return parts


GEMINI_SSE = b"".join(b"data: " + json.dumps(p).encode() + b"\r\n\r\n" for p in gemini_parts())
GEMINI_ARRAY = ("[" + "\n,\r\n".join(json.dumps(p, indent=2) for p in gemini_parts()) + "\n]").encode()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c]


def run(meter: CallMeter, chunks: list[bytes]) -> bytes:
    out = b"".join(meter.feed(c) for c in chunks)
    return out + meter.end()


CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)
CHAT_REQ = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


@settings(max_examples=60, deadline=None)
@given(cuts=CUTS)
def test_openai_stream_any_split_hides_usage_and_meters(cuts: list[int]) -> None:
    meter = openai.make_meter("/v1/chat/completions", "POST", CHAT_REQ)
    assert isinstance(meter, openai.OpenAIMeter) and meter.hide_usage
    assert json.loads(meter.body)["stream_options"] == {"include_usage": True}
    out = run(meter, split(openai_stream(True), cuts))
    assert out == openai_stream(True).replace(
        _sse(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": fx.OPENAI_CHAT_MODEL,
                "choices": [],
                "usage": fx.OPENAI_CHAT_USAGE,
            }
        ),
        b"",
    )
    assert meter.complete and meter.model == fx.OPENAI_CHAT_MODEL
    assert meter.usage() == normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE)


@settings(max_examples=60, deadline=None)
@given(cuts=CUTS)
def test_openai_stream_any_split_passes_bytes_unchanged(cuts: list[int]) -> None:
    body = b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}, "messages": []}'
    meter = openai.make_meter("/v1/chat/completions", "POST", body)
    assert meter is not None and meter.body is body
    chunks = split(openai_stream(True), cuts)
    outs = [meter.feed(c) for c in chunks]
    assert all(o is c for o, c in zip(outs, chunks, strict=True)), "no copy, no re-chunking"
    meter.end()
    assert meter.usage() == normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE)


@settings(max_examples=60, deadline=None)
@given(cuts=CUTS)
def test_anthropic_stream_any_split(cuts: list[int]) -> None:
    meter = anthropic.make_meter(
        "/v1/messages", "POST", b'{"model": "claude", "max_tokens": 9, "stream": true}'
    )
    assert meter is not None and meter.max_output_tokens == 9
    assert run(meter, split(ANTHROPIC_STREAM, cuts)) == ANTHROPIC_STREAM
    assert meter.complete and meter.model == fx.ANTHROPIC_MODEL
    assert meter.usage() == normalize.anthropic_usage(fx.ANTHROPIC_USAGE)


@settings(max_examples=60, deadline=None)
@given(cuts=CUTS, sse=st.booleans())
def test_gemini_stream_any_split(cuts: list[int], sse: bool) -> None:
    path = f"/v1beta/models/{fx.GEMINI_MODEL}:streamGenerateContent"
    meter = gemini.make_meter(path, "POST", b'{"contents": []}', "alt=sse" if sse else "")
    data = GEMINI_SSE if sse else GEMINI_ARRAY
    assert run(meter, split(data, cuts)) == data  # type: ignore[arg-type]
    assert meter is not None and meter.complete and meter.model == fx.GEMINI_MODEL
    assert meter.usage() == normalize.gemini_usage(fx.GEMINI_USAGE)


def test_responses_stream_and_cut_estimates() -> None:
    meter = openai.make_meter(
        "/v1/responses",
        "POST",
        b'{"model": "o4-mini", "stream": true, "input": "' + b"x" * 400 + b'", "max_output_tokens": 50}',
    )
    assert meter is not None and meter.max_output_tokens == 50
    meter.feed(
        _sse({"type": "response.created", "response": {"model": fx.OPENAI_RESPONSES_MODEL, "usage": None}})
    )
    meter.feed(_sse({"type": "response.output_text.delta", "delta": "y" * 40}))
    meter.end()
    assert meter.usage() is None and not meter.complete
    assert meter.model == fx.OPENAI_RESPONSES_MODEL
    assert meter.est_input_tokens() == 100 and meter.est_output_tokens() == 10


@pytest.mark.parametrize(
    ("maker", "path", "body", "message"),
    [
        (openai.make_meter, "/v1/chat/completions", b"", "empty"),
        (openai.make_meter, "/v1/chat/completions", b"\xff\xfe", "not valid JSON"),
        (openai.make_meter, "/v1/embeddings", b'{"input": "x"}', "model"),
        (openai.make_meter, "/v1/embeddings", b'{"model": 5}', "model"),
        (anthropic.make_meter, "/v1/messages", b"null", "JSON object"),
    ],
)
def test_bad_bodies(maker: Any, path: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        maker(path, "POST", body)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/models", "GET"),
        ("/v1/chat/completions", "GET"),
        ("/v1/files", "POST"),
        ("/v1/messages/count_tokens", "POST"),
    ],
)
def test_unmetered_paths(path: str, method: str) -> None:
    maker = anthropic.make_meter if "messages" in path else openai.make_meter
    assert maker(path, method, b"{}") is None


def test_gemini_fallback_model_rewrites_the_path() -> None:
    meter = gemini.make_meter("/v1beta/models/gemini-2.5-pro:generateContent", "POST", b"{}")
    assert isinstance(meter, gemini.GeminiMeter)
    meter.set_model("gemini-2.5-flash")
    assert meter.path == "/v1beta/models/gemini-2.5-flash:generateContent"


def test_estimate_ignores_ids_and_binary() -> None:
    base = estimate_tokens_from_json({"messages": [{"role": "user", "content": "a" * 400}]})
    with_image = estimate_tokens_from_json(
        {"messages": [{"role": "user", "content": "a" * 400, "data": "QUJD" * 10_000}]}
    )
    assert base == with_image == 100 + 4


@pytest.mark.parametrize(
    ("raw", "tags"),
    [("a=1, b=2", {"a": "1", "b": "2"}), ("solo", {"solo": ""}), (" , =x, k=v=w", {"k": "v=w"}), ("", {})],
)
def test_parse_tags(raw: str, tags: dict[str, str]) -> None:
    assert parse_tags(raw) == tags


@pytest.mark.parametrize("sse", [False, True])
def test_gemini_stream_every_single_cut(sse: bool) -> None:
    """Exhaustive over one cut: a key or model name split across two chunks is still read."""
    path = f"/v1beta/models/{fx.GEMINI_MODEL}:streamGenerateContent"
    data = GEMINI_SSE if sse else GEMINI_ARRAY
    missed = []
    for cut in range(len(data) + 1):
        meter = gemini.make_meter(path, "POST", b'{"contents": []}', "alt=sse" if sse else "")
        assert meter is not None
        assert run(meter, split(data, [cut])) == data  # type: ignore[arg-type]
        if not (
            meter.complete
            and meter.model == fx.GEMINI_MODEL
            and meter.usage() == normalize.gemini_usage(fx.GEMINI_USAGE)
        ):
            missed.append(cut)
    assert missed == []


def test_anthropic_and_openai_streams_every_single_cut() -> None:
    """Exhaustive over one cut, as for Gemini: no split point loses usage, model or completion."""
    missed = []
    for cut in range(len(ANTHROPIC_STREAM) + 1):
        meter = anthropic.make_meter(
            "/v1/messages", "POST", b'{"model": "claude", "max_tokens": 9, "stream": true}'
        )
        assert meter is not None
        assert run(meter, split(ANTHROPIC_STREAM, [cut])) == ANTHROPIC_STREAM
        if not (
            meter.complete
            and meter.model == fx.ANTHROPIC_MODEL
            and meter.usage() == normalize.anthropic_usage(fx.ANTHROPIC_USAGE)
        ):
            missed.append(("anthropic", cut))
    body = b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}, "messages": []}'
    data = openai_stream(True)
    for cut in range(len(data) + 1):
        meter = openai.make_meter("/v1/chat/completions", "POST", body)
        assert meter is not None
        for c in split(data, [cut]):
            meter.feed(c)
        meter.end()
        if meter.usage() != normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE):
            missed.append(("openai", cut))
    assert missed == []
