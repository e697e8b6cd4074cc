"""Broken upstreams get a protocol answer: never garbage passed on as success, always recorded with a reason."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes.broken import BROKEN, BrokenUpstream
from fakes.servers import RunningProxy, free_port, running_proxy

from llmbudget.config import Config

MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-20250514", "gemini": "gemini-2.5-flash"}
STREAM_PATH = {
    "openai": "/openai/v1/chat/completions",
    "anthropic": "/anthropic/v1/messages",
    "gemini": "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
}
PLAIN_PATH = {
    "openai": "/openai/v1/chat/completions",
    "anthropic": "/anthropic/v1/messages",
    "gemini": "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
}


def body(protocol: str, stream: bool) -> dict[str, Any]:
    if protocol == "gemini":
        return {"contents": [{"parts": [{"text": "hi"}]}]}
    b: dict[str, Any] = {"model": MODEL[protocol], "messages": [{"role": "user", "content": "hi"}]}
    if protocol == "anthropic":
        b["max_tokens"] = 10
    if stream:
        b["stream"] = True
    return b


@pytest.fixture(scope="module")
def broken() -> Iterator[BrokenUpstream]:
    server = BrokenUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(broken: BrokenUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    dead = f"http://127.0.0.1:{free_port()}/secret-base-path"
    config = Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": broken.url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": broken.url, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": broken.url, "provider": "google"},
                "dead-openai": {"kind": "openai", "base_url": dead},
                "dead-anthropic": {"kind": "anthropic", "base_url": dead},
                "dead-gemini": {"kind": "gemini", "base_url": dead},
            }
        }
    )
    with running_proxy(config, tmp_path_factory.mktemp("broken") / "ledger.db") as running:
        yield running


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of every SSE event; data that is not JSON fails the test."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if data:
            payload = b"\n".join(data)
            out.append((name, payload.decode() if payload == b"[DONE]" else json.loads(payload)))
    return out


def assert_error_event(protocol: str, event: tuple[str | None, Any]) -> str:
    name, data = event
    if protocol == "anthropic":
        assert name == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
    else:
        assert isinstance(data["error"], dict)
    return str(data["error"]["message"])


@pytest.mark.parametrize("good", [0, 3])
@pytest.mark.parametrize("mode", sorted(BROKEN))
@pytest.mark.parametrize("protocol", sorted(STREAM_PATH))
def test_a_broken_stream_ends_with_the_protocols_error_event(
    protocol: str, mode: str, good: int, proxy: RunningProxy
) -> None:
    sess = uuid.uuid4().hex
    r = httpx.post(
        proxy.url + STREAM_PATH[protocol],
        json=body(protocol, True),
        headers={"x-broken": mode, "x-broken-good": str(good), "X-LLMBudget-Session": sess},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.content)  # every event parses: no garbage reached the client
    valid_first = good if BROKEN[mode][0] == "text/event-stream" else 0
    assert len(events) == valid_first + 1
    message = assert_error_event(protocol, events[-1])
    assert f"backend '{protocol}'" in message
    assert b"\x00" not in r.content and b"<html>" not in r.content
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "error"
    assert (event.reason or "").startswith(f"backend '{protocol}'")


@pytest.mark.parametrize("tail", ["", ',{"cand'])
def test_a_truncated_gemini_json_array_closes_with_an_error_object(tail: str, proxy: RunningProxy) -> None:
    sess = uuid.uuid4().hex
    r = httpx.post(
        proxy.url + "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        json=body("gemini", True),
        headers={"x-broken": "array", "x-broken-tail": tail, "X-LLMBudget-Session": sess},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.content.rstrip().endswith(b"]")
    assert b'{"error": {"code": 502' in r.content
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "error" and "truncated" in (event.reason or "")


def test_a_whole_gemini_json_array_is_ok(proxy: RunningProxy) -> None:
    sess = uuid.uuid4().hex
    r = httpx.post(
        proxy.url + "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        json=body("gemini", True),
        headers={"x-broken": "array", "X-LLMBudget-Session": sess},
        timeout=10,
    )
    data = json.loads(r.content)
    assert isinstance(data, list) and len(data) == 2
    [event] = proxy.wait_events(1, session=sess)
    assert event.status != "error" and event.reason is None


@pytest.mark.parametrize("mode", ["json-not-json", "json-empty"])
@pytest.mark.parametrize("protocol", sorted(PLAIN_PATH))
def test_a_non_json_200_is_a_502_in_the_protocols_shape(
    protocol: str, mode: str, proxy: RunningProxy
) -> None:
    sess = uuid.uuid4().hex
    r = httpx.post(
        proxy.url + PLAIN_PATH[protocol],
        json=body(protocol, False),
        headers={"x-broken": mode, "X-LLMBudget-Session": sess},
        timeout=10,
    )
    assert r.status_code == 502
    answer = r.json()
    if protocol == "anthropic":
        assert answer["type"] == "error"
    message = answer["error"]["message"]
    assert f"backend '{protocol}'" in message and "not a" in message
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "error" and event.http_status == 502 and (event.reason or "")


@pytest.mark.parametrize("mode", ["garbage", "html", "truncated"])
def test_sdks_raise_on_a_broken_stream_instead_of_returning_success(mode: str, proxy: RunningProxy) -> None:
    oc = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-test", max_retries=0)
    ac = anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-test", max_retries=0)
    try:
        with pytest.raises(openai.APIError, match="backend 'openai'"):
            for _ in oc.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_headers={"x-broken": mode, "x-broken-good": "2"},
            ):
                pass
        with pytest.raises(anthropic.APIStatusError, match="backend 'anthropic'"):
            for _ in ac.messages.create(
                model=MODEL["anthropic"],
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_headers={"x-broken": mode, "x-broken-good": "2"},
            ):
                pass
        with pytest.raises(openai.InternalServerError, match="not a openai answer"):
            oc.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-broken": "json-not-json"},
            )
    finally:
        oc.close()
        ac.close()


@pytest.mark.parametrize("protocol", sorted(PLAIN_PATH))
def test_a_connection_failure_names_the_backend_and_host_port_only(
    protocol: str, proxy: RunningProxy
) -> None:
    port = proxy.services.config.backends[f"dead-{protocol}"].base_url.split(":")[2].split("/")[0]
    path = PLAIN_PATH[protocol].replace(f"/{protocol}/", f"/dead-{protocol}/", 1)
    sess = uuid.uuid4().hex
    r = httpx.post(
        proxy.url + path + "?key=AIzaPLANTED",
        json=body(protocol, False),
        headers={"X-LLMBudget-Session": sess},
        timeout=10,
    )
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert f"backend 'dead-{protocol}' at 127.0.0.1:{port}" in message
    assert "secret-base-path" not in message and "AIzaPLANTED" not in message and "/v1" not in message
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "error" and f"127.0.0.1:{port}" in (event.reason or "")


def test_the_proxy_keeps_serving_good_streams(proxy: RunningProxy, broken: BrokenUpstream) -> None:
    sess = uuid.uuid4().hex
    broken.script = [b'data: {"id": "c", "choices": [{"delta": {"content": "hi"}}]}\n\n', b"data: [DONE]\n\n"]
    r = httpx.post(
        proxy.url + STREAM_PATH["openai"],
        json=body("openai", True),
        headers={"x-broken": "scripted", "X-LLMBudget-Session": sess},
        timeout=10,
    )
    assert [e for _, e in sse_events(r.content)][-1] == "[DONE]"
    [event] = proxy.wait_events(1, session=sess)
    assert event.status in ("ok", "interrupted") and event.reason is None
