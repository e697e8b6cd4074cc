"""One object per wire protocol: no module branches on a protocol's name, and each object's error
bodies and in-stream error events are what the official SDKs parse."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from llmbudget.capture.protocols import PROTOCOLS, MeteredProtocol
from llmbudget.config import BackendConfig
from llmbudget.wire import ANTHROPIC, GEMINI, OPENAI
from llmbudget.wire import PROTOCOLS as WIRE_PROTOCOLS

PACKAGE = Path(__file__).resolve().parent.parent / "llmbudget"
#: where a protocol's name may decide something: the protocol objects themselves
HOMES = {"wire.py", "capture/protocols.py"}
_NAME = r'"(?:openai|anthropic|gemini)"'
#: `x == "gemini"`, `"anthropic" != x`, `x in ("openai", ...)`, `match x: case "gemini"`
BRANCH = re.compile(
    rf"(?:[=!]=\s*{_NAME})|(?:{_NAME}\s*[=!]=)|(?:\bin\s*[(\[{{]\s*{_NAME})|(?:\bcase\s+{_NAME})"
)
#: the same words meaning something else than a wire protocol
NOT_A_PROTOCOL = {
    # the demo's simulated agents are clients: each builds its own protocol's request
    ("demo/agents.py", 'if agent.backend == "anthropic":'),
    # a price-book provider id (genai-prices), not a wire protocol
    ("pricing/genai.py", 'if gp_provider_id == "anthropic" and tier == "fast":'),
}


def test_no_module_branches_on_a_protocol_name() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in HOMES:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if BRANCH.search(line) and (rel, line.strip()) not in NOT_A_PROTOCOL:
                found.append(f"llmbudget/{rel}:{n}: {line.strip()}")
    assert found == [], (
        "ask the protocol object (llmbudget/wire.py, capture/protocols.py) instead:\n" + "\n".join(found)
    )


def test_the_pattern_catches_a_branch() -> None:
    for line in (
        'if kind == "gemini":',
        'if "anthropic" != p:',
        'x in ("openai", "anthropic")',
        'case "gemini":',
    ):
        assert BRANCH.search(line), line
    assert not BRANCH.search('PROTOCOLS["gemini"]')


def test_one_object_per_configurable_kind() -> None:
    kinds = set(typing.get_args(BackendConfig.model_fields["kind"].annotation))
    assert set(PROTOCOLS) == set(WIRE_PROTOCOLS) == kinds
    for name, protocol in PROTOCOLS.items():
        assert isinstance(protocol, MeteredProtocol) and protocol.name == name
        wire = WIRE_PROTOCOLS[name]
        # the metered object carries every fact of the wire one
        for field in (
            "provider",
            "key_headers",
            "upstream_key_header",
            "quota_in_error_body",
            "usage_fields",
        ):
            assert getattr(protocol, field) == getattr(wire, field)
    assert GEMINI.provider == "google" and GEMINI.quota_in_error_body and GEMINI.key_query == "key"
    assert ANTHROPIC.call_id_header == "request-id" and ANTHROPIC.call_id is not None
    assert OPENAI.call_id is None and not OPENAI.names_provider


STATUSES = (400, 401, 403, 404, 413, 415, 429, 431, 502, 503)


def _client(protocol: str, handler: Any) -> Any:
    # each SDK on its own HTTP package (the Anthropic SDK takes only httpx2's objects)
    http_mod = httpx if protocol == "openai" else httpx2
    http = http_mod.Client(transport=http_mod.MockTransport(handler))
    if protocol == "openai":
        return openai.OpenAI(
            api_key="k", base_url="http://proxy.test/openai/v1", http_client=http, max_retries=0
        )
    return anthropic.Anthropic(
        api_key="k", base_url="http://proxy.test/anthropic", http_client=http, max_retries=0
    )


def _call(protocol: str, client: Any, stream: bool = False) -> Any:
    if protocol == "openai":
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=stream
        )
    else:
        out = client.messages.create(
            model="claude-sonnet-4-0",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            stream=stream,
        )
    return list(out) if stream else out


@pytest.mark.parametrize("name", ["openai", "anthropic"])
@pytest.mark.parametrize("status", STATUSES)
def test_error_bodies_are_what_the_sdk_raises(name: str, status: int) -> None:
    protocol = PROTOCOLS[name]
    body = protocol.error_bytes(status, "llmbudget says no", "budget_exceeded")

    def handler(request: Any) -> Any:
        mod = httpx if name == "openai" else httpx2
        return mod.Response(status, content=body, headers={"content-type": "application/json"})

    sdk = openai if name == "openai" else anthropic
    with pytest.raises(sdk.APIStatusError) as info:
        _call(name, _client(name, handler))
    err = info.value
    assert err.status_code == status
    assert "llmbudget says no" in err.message
    if name == "openai":
        assert err.code == "budget_exceeded" and isinstance(err.type, str)  # type: ignore[attr-defined]
    else:
        assert err.body["type"] == "error" and isinstance(err.body["error"]["type"], str)  # type: ignore[index]


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_in_stream_error_events_are_what_the_sdk_raises(name: str) -> None:
    protocol = PROTOCOLS[name]
    if name == "openai":
        first = b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    else:
        first = (
            b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
            b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
            b'"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
        )
    note = protocol.stream_error(b"text/event-stream", "the upstream closed the stream early")
    assert note is not None

    def handler(request: Any) -> Any:
        mod = httpx if name == "openai" else httpx2
        return mod.Response(200, content=first + note, headers={"content-type": "text/event-stream"})

    sdk = openai if name == "openai" else anthropic
    with pytest.raises(sdk.APIError) as info:
        _call(name, _client(name, handler), stream=True)
    assert "closed the stream early" in str(info.value.message)


def test_gemini_errors_are_google_rpc_statuses() -> None:
    codes = {"INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
    codes |= {"UNAVAILABLE", "INTERNAL"}
    for status in STATUSES:
        body = json.loads(GEMINI.error_bytes(status, "no", "budget_exceeded"))
        assert set(body) == {"error"} and body["error"]["code"] == status and body["error"]["message"] == "no"
        assert body["error"]["status"] in codes
    assert json.loads(GEMINI.error_bytes(429, "q"))["error"]["status"] == "RESOURCE_EXHAUSTED"
    # the JSON-array stream ends with an error object closing the array
    started = GEMINI.stream_error(b"application/json", "cut", started=True)
    assert started is not None and started.startswith(b",\n") and started.endswith(b"]\n")
    opened = GEMINI.stream_error(b"application/json", "cut", started=False)
    assert opened is not None and json.loads(opened)[0]["error"]["message"] == "cut"
    assert GEMINI.stream_error(b"application/json", "cut") is None
