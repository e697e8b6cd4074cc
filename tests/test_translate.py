"""Anthropic Messages <-> OpenAI chat translation, and fallback through the real proxy with the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.capture.translate import (
    StreamTranslator,
    anthropic_request_to_openai,
    openai_response_to_anthropic,
)
from llmbudget.config import parse_config

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def test_request_system_messages_tools_and_results() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "system": [{"type": "text", "text": "Be brief."}],
        "tools": TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stream": True,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "tu1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "tu1", "content": "18C"},
                    {"type": "text", "text": "And tomorrow?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                ],
            },
        ],
    }
    out = anthropic_request_to_openai(body)
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}
    assert out["messages"][1] == {"role": "user", "content": "Weather in Paris?"}
    assert out["messages"][2] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "tu1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "tu1", "content": "18C"}
    assert out["messages"][4] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "And tomorrow?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": TOOLS[0]["input_schema"],
            },
        }
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (out["max_tokens"], out["temperature"], out["stop"]) == (300, 0.2, ["END"])
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_response_with_text_and_tool_call() -> None:
    resp = {
        "id": "c1",
        "model": "llama3.2",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7},
    }
    out = openai_response_to_anthropic(resp)
    assert out["type"] == "message" and out["model"] == "llama3.2" and out["stop_reason"] == "tool_use"
    assert out["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert out["usage"] == {"input_tokens": 12, "output_tokens": 7}


def _events(raw: bytes) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_stream_translation_split_anywhere() -> None:
    chunks = [
        {
            "id": "c",
            "model": "llama3.2",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
        },
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            "id": "c",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "function": {"name": "get_weather", "arguments": '{"ci'},
                            }
                        ]
                    },
                }
            ],
        },
        {
            "id": "c",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]},
                }
            ],
        },
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]
    raw = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    tr = StreamTranslator("llama3.2")
    out = b"".join(tr.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + tr.finish()
    ev = _events(out)
    assert [e["type"] for e in ev] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    text = "".join(
        e["delta"]["text"]
        for e in ev
        if e["type"] == "content_block_delta"  # type: ignore[index]
        and e["delta"]["type"] == "text_delta"
    )  # type: ignore[index]
    args = "".join(
        e["delta"]["partial_json"]
        for e in ev
        if e["type"] == "content_block_delta"  # type: ignore[index]
        and e["delta"]["type"] == "input_json_delta"
    )  # type: ignore[index]
    assert text == "Hello" and json.loads(args) == {"city": "Paris"}
    assert ev[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert ev[-2]["usage"] == {"output_tokens": 4, "input_tokens": 9}


# ------------------------------------------------------------------------------ through the proxy


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def proxy(fake: FakeUpstream, tmp_path: Path) -> Iterator[RunningProxy]:
    text = (
        f"backends:\n  anthropic: {{kind: anthropic, base_url: {fake.url}, provider: anthropic}}\n"
        f"  ollama: {{kind: openai, base_url: {fake.url}, local: true}}\n"
        "budgets:\n  daily_limit_usd: 0.000001\n  timezone: UTC\n  fallback: ollama\n"
        "  fallback_model: llama3.2\n"
    )
    cfg, _ = parse_config(text, "x.yaml")
    with running_proxy(cfg, tmp_path / "l.db") as running:
        yield running


_clients: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every SDK client a test made: an unclosed socket's warning would fail a later test."""
    yield
    while _clients:
        _clients.pop().close()


def client(proxy: RunningProxy) -> anthropic.Anthropic:
    c = anthropic.Anthropic(api_key="sk-ant-test", base_url=f"{proxy.url}/anthropic", max_retries=0)
    _clients.append(c)
    return c


def test_anthropic_sdk_falls_back_to_openai_local_server(proxy: RunningProxy) -> None:
    raw = client(proxy).messages.with_raw_response.create(
        model=fx.ANTHROPIC_MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    msg = raw.parse()
    assert raw.headers["x-llmbudget-notice"].startswith("Cloud budget exhausted, operating local-only until ")
    assert msg.type == "message" and msg.content[0].type == "text" and msg.content[0].text
    assert msg.usage.input_tokens == fx.OPENAI_CHAT_USAGE["prompt_tokens"]
    [ev] = proxy.wait_events(1)
    assert (ev.status, ev.backend, ev.request_model, ev.price_status) == (
        "fallback",
        "ollama",
        "llama3.2",
        "local",
    )
    assert ev.output_tokens == fx.OPENAI_CHAT_USAGE["completion_tokens"]


def test_anthropic_sdk_stream_falls_back_and_is_metered(proxy: RunningProxy) -> None:
    with client(proxy).messages.stream(
        model=fx.ANTHROPIC_MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.stop_reason == "end_turn"
    [ev] = proxy.wait_events(1)
    assert ev.status == "fallback" and ev.streamed and ev.backend == "ollama"
    assert ev.input_tokens == fx.OPENAI_CHAT_USAGE["prompt_tokens"]
