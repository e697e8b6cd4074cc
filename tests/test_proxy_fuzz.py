"""Hypothesis drives random bodies, headers and upstream SSE through the real proxy: zero 500s,
no garbage passed on as events, one recorded event per metered call, and the normal calls made
in between are all recorded."""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fakes.broken import BrokenUpstream
from fakes.servers import RunningProxy, running_proxy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbudget.config import Config

PATHS = {
    "openai": "/openai/v1/chat/completions",
    "anthropic": "/anthropic/v1/messages",
    "gemini": "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
}
#: examples run per surface (the figures for the record)
CASES: dict[str, int] = {"bodies": 0, "headers": 0, "sse": 0}
NORMAL: list[str] = []
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[BrokenUpstream]:
    server = BrokenUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(upstream: BrokenUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    config = Config.model_validate(
        {
            "server": {"max_body_mb": 1},
            "budgets": {"daily_limit_usd": 1_000_000_000},  # exercised, never reached by fuzzed usage
            "backends": {
                "openai": {"kind": "openai", "base_url": upstream.url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": upstream.url, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": upstream.url, "provider": "google"},
            },
        }
    )
    with running_proxy(config, tmp_path_factory.mktemp("fuzz") / "ledger.db") as running:
        yield running


@pytest.fixture(scope="module")
def client(proxy: RunningProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        yield c


def normal_call(client: httpx.Client, upstream: BrokenUpstream) -> None:
    """A well-formed streamed call between the fuzzed ones; it must be recorded like any other."""
    sess = uuid.uuid4().hex
    upstream.script = [
        b'data: {"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "ok"}}]}\n\n',
        b'data: {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n',
        b"data: [DONE]\n\n",
    ]
    upstream.script_type = "text/event-stream"
    r = client.post(
        PATHS["openai"],
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-broken": "scripted", "X-LLMBudget-Session": sess},
    )
    assert r.status_code == 200 and b"[DONE]" in r.content
    NORMAL.append(sess)


def sse_payloads(raw: bytes) -> list[bytes]:
    out = []
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            out.append(line[5:].strip())
    return out


@given(
    protocol=st.sampled_from(sorted(PATHS)),
    body=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"model": st.one_of(st.text(max_size=30), json_values), "messages": json_values},
            optional={"stream": json_values, "max_tokens": numbers, "stream_options": json_values},
        ).map(lambda v: json.dumps(v).encode()),
    ),
    ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
)
@FUZZ
def test_random_bodies_never_make_a_500(
    protocol: str, body: bytes, ctype: str, client: httpx.Client, upstream: BrokenUpstream
) -> None:
    CASES["bodies"] += 1
    upstream.script = [b'data: {"id": "c", "choices": []}\n\n', b"data: [DONE]\n\n"]
    upstream.script_type = "text/event-stream"
    headers = {"x-broken": "scripted"}
    if ctype:
        headers["content-type"] = ctype
    r = client.post(PATHS[protocol], content=body, headers=headers)
    assert r.status_code < 500 or r.status_code == 502, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], dict)  # the protocol's error shape, never plain text
    if CASES["bodies"] % 10 == 0:
        normal_call(client, upstream)


#: header values a client can send at all (h11 refuses control characters and edge whitespace)
header_text = st.text(alphabet=string.printable.strip("\r\n\x0b\x0c") + " ", max_size=300).map(
    lambda v: v.strip(" \t")
)


@given(
    protocol=st.sampled_from(sorted(PATHS)),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "X-LLMBudget-Agent",
                "X-LLMBudget-Session",
                "X-LLMBudget-Tags",
                "X-LLMBudget-Tier",
                "X-LLMBudget-Unknown",
                "Connection",
                "Accept-Encoding",
                "Authorization",
                "x-api-key",
                "anthropic-version",
                "x-claude-code-session-id",
                "session-id",
            ]
        ),
        header_text,
        max_size=5,
    ),
)
@FUZZ
def test_random_headers_never_make_a_500(
    protocol: str, headers: dict[str, str], client: httpx.Client, upstream: BrokenUpstream
) -> None:
    CASES["headers"] += 1
    upstream.script = [b'data: {"id": "c", "choices": []}\n\n', b"data: [DONE]\n\n"]
    upstream.script_type = "text/event-stream"
    body: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 5, "messages": []}
    r = client.post(PATHS[protocol], json=body, headers={**headers, "x-broken": "scripted"})
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if CASES["headers"] % 10 == 0:
        normal_call(client, upstream)


def _event(protocol: str, usage: dict[str, Any], text: str) -> bytes:
    if protocol == "anthropic":
        kind = "message_delta" if usage else "content_block_delta"
        data: dict[str, Any] = {"type": kind, "delta": {"type": "text_delta", "text": text}}
        if usage:
            data["usage"] = usage
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
    if protocol == "gemini":
        data = {"candidates": [{"content": {"parts": [{"text": text}]}}]}
        if usage:
            data["usageMetadata"] = usage
        return f"data: {json.dumps(data)}\r\n\r\n".encode()
    data = {"id": "c", "choices": [{"index": 0, "delta": {"content": text}}]}
    if usage:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n".encode()


usage_dicts = st.dictionaries(
    st.sampled_from(
        [
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "promptTokenCount",
            "candidatesTokenCount",
            "cachedContentTokenCount",
            "thoughtsTokenCount",
            "prompt_tokens_details",
        ]
    ),
    numbers,
    max_size=4,
)


@given(
    protocol=st.sampled_from(sorted(PATHS)),
    parts=st.lists(
        st.one_of(
            st.tuples(usage_dicts, st.text(max_size=20)).map(lambda t: ("event", t)),
            st.binary(max_size=40).map(lambda b: ("raw", b)),
            st.sampled_from([b"\n", b"\n\n", b": ping\n\n", b"data: [DONE]\n\n", b"event: error\n"]).map(
                lambda b: ("raw", b)
            ),
        ),
        max_size=8,
    ),
    ctype=st.sampled_from(
        ["text/event-stream", "text/event-stream; charset=utf-8", "text/html", "application/json"]
    ),
)
@FUZZ
def test_random_upstream_sse_is_passed_on_only_as_valid_events(
    protocol: str,
    parts: list[tuple[str, Any]],
    ctype: str,
    client: httpx.Client,
    upstream: BrokenUpstream,
    proxy: RunningProxy,
) -> None:
    CASES["sse"] += 1
    upstream.script = [_event(protocol, *p[1]) if p[0] == "event" else p[1] for p in parts]
    upstream.script_type = ctype
    sess = uuid.uuid4().hex
    body: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True, "max_tokens": 5, "messages": []}
    if protocol == "gemini":
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
    r = client.post(PATHS[protocol], json=body, headers={"x-broken": "scripted", "X-LLMBudget-Session": sess})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("text/event-stream")
    for payload in sse_payloads(r.content):
        assert payload == b"[DONE]" or isinstance(json.loads(payload), dict), payload[:100]
    [event] = proxy.wait_events(1, session=sess)
    assert event.status in ("ok", "error", "interrupted")
    if event.status == "error":
        assert event.reason or b'"error"' in r.content
    if CASES["sse"] % 10 == 0:
        normal_call(client, upstream)


@pytest.mark.parametrize("protocol", sorted(PATHS))
def test_absurd_usage_from_an_upstream_is_recorded_and_never_stops_the_ledger(
    protocol: str, client: httpx.Client, upstream: BrokenUpstream, proxy: RunningProxy
) -> None:
    """Found by the fuzzer: a count of 2**70 tokens overflowed the ledger's 64-bit columns, and the
    writer retried that batch forever, recording nothing after it."""
    huge = {
        "prompt_tokens": 2**70,
        "input_tokens": 2**70,
        "promptTokenCount": 2**70,
        "output_tokens": "9" * 18,
    }
    upstream.script = [_event(protocol, huge, "hi")]
    upstream.script_type = "text/event-stream"
    sess = uuid.uuid4().hex
    body: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True, "max_tokens": 5, "messages": []}
    if protocol == "gemini":
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
    r = client.post(PATHS[protocol], json=body, headers={"x-broken": "scripted", "X-LLMBudget-Session": sess})
    assert r.status_code == 200
    [event] = proxy.wait_events(1, session=sess)
    assert event.input_tokens < 2**63 and event.output_tokens < 2**63
    normal_call(client, upstream)
    [after] = proxy.wait_events(1, session=NORMAL[-1])
    assert after.status == "ok"


def test_the_normal_calls_in_between_were_all_recorded(proxy: RunningProxy, client: httpx.Client) -> None:
    assert sum(CASES.values()) >= 100, CASES
    assert len(NORMAL) >= 10
    for sess in NORMAL:
        [event] = proxy.wait_events(1, session=sess)
        assert event.status == "ok" and event.input_tokens == 3 and event.output_tokens == 1
    assert client.get("/healthz").status_code == 200
    print(f"\nproxy fuzz cases: {CASES}, normal calls recorded: {len(NORMAL)}")
