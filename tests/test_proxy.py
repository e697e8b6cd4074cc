"""The metering proxy end to end: official SDKs -> real uvicorn -> fake providers, events in the real SQLite ledger."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, free_port, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.config import Config
from llmbudget.events import UsageEvent
from llmbudget.pricing import normalize


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def make_config(fake_url: str) -> Config:
    return Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": fake_url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": fake_url, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": fake_url, "provider": "google"},
                "dead": {
                    "kind": "openai",
                    "base_url": f"http://127.0.0.1:{free_port()}",
                    "provider": "openai",
                },
                "dead-anthropic": {"kind": "anthropic", "base_url": f"http://127.0.0.1:{free_port()}"},
                "dead-gemini": {"kind": "gemini", "base_url": f"http://127.0.0.1:{free_port()}"},
                # backends of their own, so quota readings of other tests do not mix in
                "burst": {"kind": "openai", "base_url": fake_url, "provider": "openai"},
                # on 127.0.0.1 without `provider`: a gateway in front of paid models, or a local one
                "gateway": {"kind": "anthropic", "base_url": fake_url},
                "ollama": {"kind": "openai", "base_url": fake_url, "local": True},
                "gemq": {"kind": "gemini", "base_url": fake_url, "provider": "google"},
                "keyed": {
                    "kind": "openai",
                    "base_url": fake_url,
                    "provider": "openai",
                    "api_key_env": "LLMB_TEST_KEY",
                },
            }
        }
    )


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    db = tmp_path_factory.mktemp("proxy") / "ledger.db"
    with running_proxy(make_config(fake.url), db) as running:
        yield running


_open_clients: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close the SDK clients a test made: an unclosed socket warns (an error here) in a later test."""
    yield
    while _open_clients:
        _open_clients.pop().close()


def session_id() -> str:
    return "s-" + uuid.uuid4().hex[:10]


def oai(proxy: RunningProxy, sess: str, backend: str = "openai", **headers: str) -> openai.OpenAI:
    client = openai.OpenAI(
        api_key="sk-test",
        base_url=f"{proxy.url}/{backend}/v1",
        max_retries=0,
        default_headers={"X-LLMBudget-Session": sess, "X-LLMBudget-Agent": "tester", **headers},
    )
    _open_clients.append(client)
    return client


def ant(proxy: RunningProxy, sess: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url=f"{proxy.url}/anthropic",
        max_retries=0,
        default_headers={"X-LLMBudget-Session": sess, "X-LLMBudget-Agent": "tester"},
    )
    _open_clients.append(client)
    return client


def expected(proxy: RunningProxy, event: UsageEvent, usage: normalize.TokenUsage) -> None:
    """The event's tokens are what the fake provider reported, and its cost is the price book's."""
    assert {k: getattr(event, k) for k in usage.as_dict()} == usage.as_dict()
    priced = proxy.services.prices.price_event(
        UsageEvent(
            backend=event.backend,
            model=event.model,
            provider=event.provider,
            timestamp=event.timestamp,
            **usage.as_dict(),
        )
    )
    assert priced.price_status == "priced"
    assert event.cost_usd == priced.cost_usd and event.cost_usd is not None and event.cost_usd > 0
    assert event.price_status == "priced"


# ---------------------------------------------------------------------------------------------- OpenAI


def test_openai_chat_non_streamed(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sess = session_id()
    client = oai(
        proxy, sess, **{"X-LLMBudget-Tags": "project=alpha, env=test", "X-LLMBudget-Task-Type": "qa"}
    )
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "".join(fx.TEXT)
    [event] = proxy.wait_events(1, session=sess)
    assert raw.headers["x-llmbudget-request-id"] == event.id
    assert raw.headers["x-llmbudget-cost-usd"] == format(event.cost_usd.normalize(), "f")
    assert (event.model, event.request_model, event.backend, event.provider) == (
        fx.OPENAI_CHAT_MODEL,
        "gpt-4o-mini",
        "openai",
        "openai",
    )
    assert (event.status, event.http_status, event.streamed, event.source) == ("ok", 200, False, "proxy")
    assert (event.agent, event.task_type, event.tags) == ("tester", "qa", {"project": "alpha", "env": "test"})
    expected(proxy, event, normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE))
    assert event.cached_input_tokens == 1024 and event.reasoning_tokens == 128
    sent = fake.requests[-1]
    assert not any(k.lower().startswith("x-llmbudget") for k in sent["headers"])
    assert sent["headers"]["authorization"] == "Bearer sk-test"


def test_openai_chat_streamed_hides_the_usage_chunk_it_asked_for(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sess = session_id()
    stream = oai(proxy, sess).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks), "the usage-only chunk must not reach a client that did not ask"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(fx.TEXT)
    assert fake.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    [event] = proxy.wait_events(1, session=sess)
    assert event.streamed and event.status == "ok" and event.ttft_ms is not None
    expected(proxy, event, normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE))


def test_openai_chat_streamed_client_asked_for_usage(proxy: RunningProxy) -> None:
    sess = session_id()
    chunks = list(
        oai(proxy, sess).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == fx.OPENAI_CHAT_USAGE["prompt_tokens"]
    [event] = proxy.wait_events(1, session=sess)
    expected(proxy, event, normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE))


@pytest.mark.parametrize("stream", [False, True])
def test_openai_responses(proxy: RunningProxy, stream: bool) -> None:
    sess = session_id()
    client = oai(proxy, sess)
    if stream:
        events = list(client.responses.create(model="o4-mini", input="hi", stream=True))
        assert events[-1].type == "response.completed"
    else:
        resp = client.responses.create(model="o4-mini", input="hi", max_output_tokens=900)
        assert resp.output_text == "".join(fx.TEXT)
    [event] = proxy.wait_events(1, session=sess)
    assert event.model == fx.OPENAI_RESPONSES_MODEL and event.streamed is stream
    expected(proxy, event, normalize.openai_responses_usage(fx.OPENAI_RESPONSES_USAGE))
    assert event.reasoning_tokens == 448


@pytest.mark.parametrize("stream", [False, True])
def test_openai_completions(proxy: RunningProxy, stream: bool) -> None:
    sess = session_id()
    client = oai(proxy, sess)
    if stream:
        text = "".join(
            c.choices[0].text
            for c in client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True)
            if c.choices
        )
    else:
        text = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi").choices[0].text
    assert text == "".join(fx.TEXT)
    [event] = proxy.wait_events(1, session=sess)
    expected(proxy, event, normalize.openai_chat_usage(fx.OPENAI_COMPLETIONS_USAGE))


def test_openai_embeddings(proxy: RunningProxy) -> None:
    sess = session_id()
    out = oai(proxy, sess).embeddings.create(model="text-embedding-3-small", input="hello")
    assert out.data[0].embedding == [0.1, 0.2, 0.3]
    [event] = proxy.wait_events(1, session=sess)
    assert event.model == fx.OPENAI_EMBEDDINGS_MODEL and event.output_tokens == 0
    expected(proxy, event, normalize.openai_embeddings_usage(fx.OPENAI_EMBEDDINGS_USAGE))


# ---------------------------------------------------------------------------------------------- Anthropic


def test_anthropic_messages_non_streamed(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sess = session_id()
    raw = ant(proxy, sess).messages.with_raw_response.create(
        model="claude-sonnet-4-0", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    msg = raw.parse()
    assert msg.content[0].text == "".join(fx.TEXT)
    [event] = proxy.wait_events(1, session=sess)
    assert raw.headers["x-llmbudget-request-id"] == event.id and "x-llmbudget-cost-usd" in raw.headers
    assert (event.model, event.request_model) == (fx.ANTHROPIC_MODEL, "claude-sonnet-4-0")
    expected(proxy, event, normalize.anthropic_usage(fx.ANTHROPIC_USAGE))
    assert (event.input_tokens, event.cached_input_tokens, event.cache_write_tokens) == (1300, 1000, 200)
    sent = fake.requests[-1]["headers"]
    assert "sk-ant-test" in (sent.get("x-api-key", ""), sent.get("authorization", "").removeprefix("Bearer "))


def test_anthropic_messages_stream(proxy: RunningProxy) -> None:
    sess = session_id()
    with ant(proxy, sess).messages.stream(
        model="claude-sonnet-4-0", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(fx.TEXT) and final.usage.output_tokens == fx.ANTHROPIC_USAGE["output_tokens"]
    [event] = proxy.wait_events(1, session=sess)
    assert event.streamed and event.status == "ok"
    expected(proxy, event, normalize.anthropic_usage(fx.ANTHROPIC_USAGE))


def test_anthropic_count_tokens_is_unmetered(proxy: RunningProxy) -> None:
    sess = session_id()
    out = ant(proxy, sess).messages.count_tokens(
        model="claude-sonnet-4-0", messages=[{"role": "user", "content": "hi"}]
    )
    assert out.input_tokens == 42
    assert proxy.wait_events(1, timeout=0.3, session=sess) == []


# ---------------------------------------------------------------------------------------------- Gemini


@pytest.mark.parametrize("form", ["generate", "sse", "json-array"])
def test_gemini(proxy: RunningProxy, form: str) -> None:
    sess = session_id()
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 500},
    }
    method = "generateContent" if form == "generate" else "streamGenerateContent"
    url = f"{proxy.url}/gemini/v1beta/models/{fx.GEMINI_MODEL}:{method}" + (
        "?alt=sse" if form == "sse" else ""
    )
    r = httpx.post(url, json=body, headers={"x-goog-api-key": "g-test", "X-LLMBudget-Session": sess})
    assert r.status_code == 200
    if form == "json-array":
        assert [p["candidates"][0]["content"]["parts"][0]["text"] for p in r.json()] == fx.TEXT
    [event] = proxy.wait_events(1, session=sess)
    assert (event.model, event.provider, event.streamed) == (fx.GEMINI_MODEL, "google", form != "generate")
    expected(proxy, event, normalize.gemini_usage(fx.GEMINI_USAGE))
    assert (event.output_tokens, event.reasoning_tokens, event.cached_input_tokens) == (300, 100, 1024)


# ---------------------------------------------------------------------------------------------- errors


def test_upstream_error_passes_through_unchanged(proxy: RunningProxy) -> None:
    sess = session_id()
    client = oai(proxy, sess, **{"x-fake": "error"})
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 429
    assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert info.value.response.headers["retry-after"] == "20"
    assert info.value.response.headers["x-request-id"] == "req_fake"
    [event] = proxy.wait_events(1, session=sess)
    assert (event.status, event.http_status, event.input_tokens) == ("error", 429, 0)


def test_anthropic_error_passes_through(proxy: RunningProxy) -> None:
    sess = session_id()
    client = anthropic.Anthropic(
        api_key="k",
        base_url=f"{proxy.url}/anthropic",
        max_retries=0,
        default_headers={"x-fake": "error", "X-LLMBudget-Session": sess},
    )
    _open_clients.append(client)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(
            model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "error" and event.http_status == 429


def test_connection_failure_is_a_502_in_each_protocol_shape(proxy: RunningProxy) -> None:
    sess = session_id()
    with oai(proxy, sess, backend="dead") as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    body = info.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    assert "dead" in body["message"]
    with (
        anthropic.Anthropic(
            api_key="k",
            base_url=f"{proxy.url}/dead-anthropic",
            max_retries=0,
            default_headers={"X-LLMBudget-Session": sess},
        ) as claude,
        pytest.raises(anthropic.APIStatusError) as ainfo,
        claude.messages.stream(
            model="claude-sonnet-4-0", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        list(stream.text_stream)
    assert ainfo.value.status_code == 502
    abody = ainfo.value.body
    assert isinstance(abody, dict) and abody["type"] == "error" and abody["error"]["type"] == "api_error"
    assert "dead-anthropic" in abody["error"]["message"]
    r = httpx.post(
        f"{proxy.url}/dead-gemini/v1beta/models/{fx.GEMINI_MODEL}:streamGenerateContent?alt=sse",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"X-LLMBudget-Session": sess},
    )
    assert r.status_code == 502 and r.json()["error"]["status"] == "UNAVAILABLE"
    assert r.json()["error"]["code"] == 502 and "dead-gemini" in r.json()["error"]["message"]
    events = proxy.wait_events(3, session=sess)
    assert sorted(e.backend for e in events) == ["dead", "dead-anthropic", "dead-gemini"]
    assert {(e.status, e.http_status) for e in events} == {("error", 502)}
    assert r.headers["x-llmbudget-request-id"] in {e.id for e in events}


@pytest.mark.parametrize(
    ("backend", "path", "content", "needle", "shape"),
    [
        ("openai", "/v1/chat/completions", b"{not json", "not valid JSON", "openai"),
        ("openai", "/v1/chat/completions", b'{"messages": []}', "model", "openai"),
        ("anthropic", "/v1/messages", b"[1, 2]", "JSON object", "anthropic"),
        ("anthropic", "/v1/messages", b'{"max_tokens": 5}', "model", "anthropic"),
        ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent", b"", "empty", "gemini"),
        ("gemini", "/v1beta/models/:generateContent", b'{"contents": []}', "model", "gemini"),
        ("gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", b"\xff\xfe", "JSON", "gemini"),
    ],
)
def test_bad_requests_get_the_protocol_error_shape(
    proxy: RunningProxy, backend: str, path: str, content: bytes, needle: str, shape: str
) -> None:
    r = httpx.post(
        f"{proxy.url}/{backend}{path}", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    body = r.json()
    if shape == "openai":
        assert needle in body["error"]["message"] and set(body["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    elif shape == "anthropic":
        assert body["type"] == "error" and needle in body["error"]["message"]
    else:
        assert body["error"]["status"] == "INVALID_ARGUMENT" and needle in body["error"]["message"]
    # and the proxy keeps serving
    assert httpx.get(f"{proxy.url}/healthz").status_code == 200


def test_unknown_backend_is_a_404_listing_backends(proxy: RunningProxy) -> None:
    with (
        openai.OpenAI(api_key="x", base_url=f"{proxy.url}/nope/v1", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as info,
    ):
        client.chat.completions.create(model="m", messages=[])
    message = info.value.body["message"]  # type: ignore[index]
    assert "nope" in message
    assert (
        "anthropic, burst, dead, dead-anthropic, dead-gemini, gateway, gemini, gemq, keyed, ollama, openai"
        in message
    )
    r = httpx.post(f"{proxy.url}/nope/v1/messages", json={})
    assert r.status_code == 404 and r.json()["type"] == "error"


def test_unknown_paths_pass_through_unmetered(proxy: RunningProxy) -> None:
    sess = session_id()
    models = oai(proxy, sess).models.list()
    assert [m.id for m in models.data] == [fx.OPENAI_CHAT_MODEL]
    assert proxy.wait_events(1, timeout=0.3, session=sess) == []


def test_api_key_env_is_injected_only_when_the_client_sends_none(
    proxy: RunningProxy, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMB_TEST_KEY", "sk-from-env")
    r = httpx.post(f"{proxy.url}/keyed/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status_code == 200
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-from-env"
    r = httpx.post(
        f"{proxy.url}/keyed/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"Authorization": "Bearer sk-own"},
    )
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-own"


# ---------------------------------------------------------------------------------------------- streams cut


def test_upstream_cut_mid_stream_is_recorded_interrupted(proxy: RunningProxy) -> None:
    sess = session_id()
    client = oai(proxy, sess, **{"x-fake": "cut"})
    with pytest.raises(Exception):  # noqa: B017 - the SDK's exception for a truncated body varies
        list(
            client.chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hello " * 40}]
            )
        )
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "interrupted" and event.streamed
    assert event.input_tokens > 0, "input is estimated from the request when usage never came"
    assert event.output_tokens > 0, "output is estimated from the text seen so far"
    assert proxy.wait_events(1, session=session_id(), timeout=0) == []
    # the proxy keeps serving
    assert oai(proxy, session_id()).embeddings.create(model="text-embedding-3-small", input="x").data


def test_anthropic_stream_cut_keeps_reported_input(proxy: RunningProxy) -> None:
    sess = session_id()
    r = httpx.post(
        f"{proxy.url}/anthropic/v1/messages",
        json={
            "model": "claude-sonnet-4-0",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"x-fake": "cut", "X-LLMBudget-Session": sess, "x-api-key": "k"},
    )
    assert b"message_start" in r.content and b"message_stop" not in r.content
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "interrupted"
    assert event.input_tokens == 1300 and event.cached_input_tokens == 1000  # from message_start


def test_garbage_sse_from_upstream(proxy: RunningProxy) -> None:
    sess = session_id()
    r = httpx.post(
        f"{proxy.url}/openai/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-fake": "garbage", "X-LLMBudget-Session": sess},
    )
    # never passed on: the stream ends with the protocol's error event where it broke
    assert r.status_code == 200 and b"garbage" not in r.content and b"not json" in r.content
    assert r.content.rstrip().endswith(b"}") and b'data: {"error": {' in r.content
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "error" and "not server-sent events" in (event.reason or "")
    r = httpx.post(
        f"{proxy.url}/openai/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-fake": "garbage", "X-LLMBudget-Session": sess},
    )
    assert r.status_code == 502 and "text/html" in r.json()["error"]["message"]
    events = proxy.wait_events(2, session=sess)
    assert [e.status for e in events] == ["error", "error"]


def test_first_chunk_reaches_the_client_while_upstream_holds_the_rest(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sess = session_id()
    fake._hold.clear()
    fake.held.clear()
    with httpx.stream(
        "POST",
        f"{proxy.url}/openai/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-fake": "hold", "X-LLMBudget-Session": sess},
        timeout=10,
    ) as r:
        it = r.iter_raw()
        first = next(it)
        # the upstream is still holding every later chunk: nothing can have been buffered
        assert fake.held.wait(5) and not fake._hold.is_set()
        assert first.startswith(b"data: ") and b'"role": "assistant"' in first
        fake.release()
        rest = b"".join(it)
    assert b"[DONE]" in rest
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "ok" and event.ttft_ms is not None and event.ttft_ms <= event.duration_ms


def test_client_disconnect_mid_stream_is_recorded(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sess = session_id()
    fake._hold.clear()
    fake.held.clear()
    with httpx.stream(
        "POST",
        f"{proxy.url}/anthropic/v1/messages",
        json={
            "model": "claude-sonnet-4-0",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"x-fake": "hold", "X-LLMBudget-Session": sess, "x-api-key": "k"},
        timeout=10,
    ) as r:
        next(r.iter_raw())
    # the client is gone while the upstream still holds the stream
    [event] = proxy.wait_events(1, session=sess)
    fake.release()
    assert event.status == "interrupted" and event.input_tokens == 1300


# ---------------------------------------------------------------------------------------------- keys, quota


def test_keys_are_forwarded_but_never_logged_or_stored(
    proxy: RunningProxy, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    sentinel = "sk-SENTINEL-" + uuid.uuid4().hex
    sess = session_id()
    caplog.set_level("DEBUG")
    client = openai.OpenAI(
        api_key=sentinel,
        base_url=f"{proxy.url}/openai/v1",
        max_retries=0,
        default_headers={"X-LLMBudget-Session": sess},
    )
    _open_clients.append(client)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    client.models.list()  # an unmetered path is logged too
    r = httpx.post(
        f"{proxy.url}/gemini/v1beta/models/{fx.GEMINI_MODEL}:generateContent?key={sentinel}",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"X-LLMBudget-Session": sess},
    )
    assert r.status_code == 200 and fake.requests[-1]["query"] == f"key={sentinel}"
    ant_client = anthropic.Anthropic(
        api_key=sentinel,
        base_url=f"{proxy.url}/anthropic",
        max_retries=0,
        default_headers={"X-LLMBudget-Session": sess},
    )
    _open_clients.append(ant_client)
    ant_client.messages.create(
        model="claude-sonnet-4-0", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )
    assert len(proxy.wait_events(3, session=sess)) == 3
    proxy.services.ledger.flush()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("llmbudget", "uvicorn"))]
    assert ours, "the proxy logs what it does"
    assert not [m for m in ours if sentinel in m]
    ledger = proxy.services.ledger
    db_path = Path(str(getattr(ledger, "path", "")))
    for path in [db_path, *db_path.parent.glob("*")]:
        if path.is_file():
            assert sentinel.encode() not in path.read_bytes(), f"key found in {path}"


def test_rate_limit_headers_become_piggyback_readings(proxy: RunningProxy) -> None:
    oai(proxy, session_id()).embeddings.create(model="text-embedding-3-small", input="x")
    ant(proxy, session_id()).messages.create(
        model="claude-sonnet-4-0", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )
    import time

    deadline = time.monotonic() + 5
    latest: dict[str, Any] = {}
    while time.monotonic() < deadline:
        latest = proxy.services.ledger.latest_readings()
        if "openai" in latest and "anthropic" in latest:
            break
        time.sleep(0.1)
    assert latest["openai"]["source"] == "piggyback"
    assert latest["anthropic"]["source"] == "piggyback"
    text = json.dumps(latest["anthropic"])
    assert "0.42" in text  # the unified 5h utilization made it into the reading


@pytest.mark.parametrize("stream", [False, True])
def test_compressed_answers_pass_unchanged_and_are_metered(
    proxy: RunningProxy, fake: FakeUpstream, stream: bool
) -> None:
    sess = session_id()
    client = oai(proxy, sess, **{"x-fake": "gzip"})
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hi"}],
            )
        )
        assert chunks[-1].usage is not None
    else:
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert out.choices[0].message.content == "".join(fx.TEXT)
    assert (
        fake.requests[-1]["headers"]["accept-encoding"] == "identity"
    )  # asked for, ignored by this upstream
    [event] = proxy.wait_events(1, session=sess)
    expected(proxy, event, normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE))


def test_hop_by_hop_headers_are_not_forwarded(proxy: RunningProxy, fake: FakeUpstream) -> None:
    r = httpx.post(
        f"{proxy.url}/openai/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "1",
            "Proxy-Authorization": "Basic x",
            "TE": "trailers",
            "X-End-To-End": "kept",
        },
    )
    assert r.status_code == 200
    sent = fake.requests[-1]["headers"]
    assert "x-hop" not in sent and "proxy-authorization" not in sent and "te" not in sent
    assert sent["x-end-to-end"] == "kept"
    assert "transfer-encoding" not in r.headers or r.headers["transfer-encoding"] == "chunked"
    assert int(r.headers["content-length"]) == len(r.content)


def test_every_attribution_header_is_read_and_none_is_forwarded(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sess = session_id()
    attribution = {
        "X-LLMBudget-Agent": "planner",
        "X-LLMBudget-Session": sess,
        "X-LLMBudget-User": "ana",
        "X-LLMBudget-Team": "search",
        "X-LLMBudget-Task": "T-7",
        "X-LLMBudget-Task-Type": "triage",
        "X-LLMBudget-Tier": "premium",
        "X-LLMBudget-Tags": "project=alpha,env=ci",
    }
    claude = anthropic.Anthropic(
        api_key="k", base_url=f"{proxy.url}/anthropic", max_retries=0, default_headers=attribution
    )
    _open_clients.append(claude)
    claude.messages.create(
        model="claude-sonnet-4-0", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )
    sent = [fake.requests[-1]["headers"]]
    r = httpx.post(
        f"{proxy.url}/gemini/v1beta/models/{fx.GEMINI_MODEL}:streamGenerateContent?alt=sse",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": "g", **attribution},
    )
    assert r.status_code == 200
    sent.append(fake.requests[-1]["headers"])
    for headers in sent:
        assert not [k for k in headers if k.startswith("x-llmbudget")], headers
    events = proxy.wait_events(2, session=sess)
    assert len(events) == 2
    for e in events:
        assert (e.agent, e.session, e.user, e.team, e.task_id, e.task_type, e.tier) == (
            "planner",
            sess,
            "ana",
            "search",
            "T-7",
            "triage",
            "premium",
        )
        assert e.tags == {"project": "alpha", "env": "ci"}


def test_bad_input_keeps_the_proxy_serving_and_loses_nothing(proxy: RunningProxy) -> None:
    sess = session_id()
    client = oai(proxy, sess)
    client.embeddings.create(model="text-embedding-3-small", input="before")
    before = {e.id for e in proxy.wait_events(1, session=sess)}
    assert len(before) == 1
    bad = [
        ("openai/v1/chat/completions", b"{nope", {}),
        ("openai/v1/chat/completions", b'{"messages": []}', {}),
        ("anthropic/v1/messages", b"not json", {}),
        ("gemini/v1beta/models/:generateContent", b"{}", {}),
        ("nope/v1/chat/completions", b"{}", {}),
        (
            "openai/v1/chat/completions",
            b'{"model": "m", "stream": true, "messages": []}',
            {"x-fake": "garbage"},
        ),
        ("openai/v1/chat/completions", b'{"model": "m", "stream": true, "messages": []}', {"x-fake": "cut"}),
    ]
    for path, body, extra in bad:
        r = httpx.post(
            f"{proxy.url}/{path}",
            content=body,
            headers={"content-type": "application/json", "X-LLMBudget-Session": sess, **extra},
        )
        assert r.status_code in (200, 400, 404), (path, r.status_code)
    client.embeddings.create(model="text-embedding-3-small", input="after")
    events = proxy.wait_events(4, session=sess)
    ids = {e.id for e in events}
    assert before <= ids, "an event recorded before the bad input is gone"
    assert sorted(e.status for e in events) == ["error", "interrupted", "ok", "ok"]


def _quota_row(proxy: RunningProxy, backend: str) -> dict[str, Any] | None:
    r = httpx.get(f"{proxy.url}/api/quota")
    assert r.status_code == 200
    rows = [row for row in r.json()["backends"] if row["backend"] == backend]
    return rows[0] if rows else None


def _wait_quota(proxy: RunningProxy, backend: str, check: Any, timeout: float = 5.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        row = _quota_row(proxy, backend)
        if (row is not None and check(row)) or time.monotonic() > deadline:
            assert row is not None, f"no quota reading for {backend}"
            return row
        time.sleep(0.05)


def test_the_last_reading_of_a_burst_is_the_one_stored(proxy: RunningProxy) -> None:
    """Readings are coalesced per backend per interval: the newest wins, never an older one."""
    client = oai(proxy, session_id(), backend="burst")
    last = 0
    for remaining in range(9000, 8960, -1):  # 40 answers, each with its own remaining count
        client.embeddings.create(
            model="text-embedding-3-small",
            input="x",
            extra_headers={"x-fake-remaining": str(remaining)},
        )
        last = remaining
    row = _wait_quota(proxy, "burst", lambda row: row["reading"]["limits"]["requests"]["remaining"] == last)
    reading = row["reading"]
    assert reading["limits"]["requests"]["remaining"] == last == 8961
    assert reading["source"] == "piggyback" and reading["provider"] == "openai"
    stored = proxy.services.ledger.readings(backend="burst")
    assert stored[-1]["limits"]["requests"]["remaining"] == last
    assert len(stored) < 40, "readings are coalesced, not stored one per call"


def test_gemini_429_body_becomes_a_piggyback_reading(proxy: RunningProxy) -> None:
    url = f"{proxy.url}/gemq/v1beta/models/{fx.GEMINI_MODEL}:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    r = httpx.post(url, json=body, headers={"x-goog-api-key": "g", "x-fake": "error"})
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"  # unchanged
    row = _wait_quota(proxy, "gemq", lambda row: row["reading"]["http_status"] == 429)
    reading = row["reading"]
    assert (reading["source"], reading["provider"], reading["retry_delay_s"]) == ("piggyback", "gemini", 17.0)
    assert [v["quota_id"] for v in reading["violations"]] == [fx.GEMINI_QUOTA_ID]
    assert row["severity"] == "CRITICAL"
    # the next call goes through: the latest state says so
    assert httpx.post(url, json=body, headers={"x-goog-api-key": "g"}).status_code == 200
    row = _wait_quota(proxy, "gemq", lambda row: row["reading"]["http_status"] == 200)
    assert row["reading"]["status"] == "allowed" and row["severity"] == "OK"


def test_compressed_stream_still_hides_the_usage_chunk(proxy: RunningProxy, fake: FakeUpstream) -> None:
    """An upstream that gzips a stream although asked for identity: the client gets it decompressed,
    without the usage chunk it never asked for."""
    sess = session_id()
    client = oai(proxy, sess, **{"x-fake": "gzip"})
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    assert "content-encoding" not in raw.headers
    chunks = list(raw.parse())
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(fx.TEXT)
    assert fake.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    [event] = proxy.wait_events(1, session=sess)
    assert event.status == "ok"
    expected(proxy, event, normalize.openai_chat_usage(fx.OPENAI_CHAT_USAGE))


def test_a_loopback_backend_is_free_only_when_marked_local(proxy: RunningProxy) -> None:
    """A gateway on 127.0.0.1 may front paid models: only `local: true` prices a call at $0."""
    sess = session_id()
    with anthropic.Anthropic(
        api_key="k",
        base_url=f"{proxy.url}/gateway",
        max_retries=0,
        default_headers={"X-LLMBudget-Session": sess},
    ) as claude:
        claude.messages.create(
            model="claude-sonnet-4-0", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with oai(proxy, sess, backend="ollama") as local:
        local.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    by_backend = {e.backend: e for e in proxy.wait_events(2, session=sess)}
    gateway, ollama = by_backend["gateway"], by_backend["ollama"]
    assert gateway.provider == "anthropic"
    expected(proxy, gateway, normalize.anthropic_usage(fx.ANTHROPIC_USAGE))
    assert (ollama.provider, ollama.price_status, ollama.cost_usd) == ("local", "local", 0)


def test_no_user_agent_or_encoding_is_invented_for_the_upstream(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    """A client that sends no User-Agent gets none added; without Accept-Encoding, identity is asked."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(proxy.url)
    conn = http.client.HTTPConnection(host.hostname or "", host.port, timeout=10)
    try:
        conn.putrequest("GET", "/openai/v1/models", skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["data"]
    finally:
        conn.close()
    sent = fake.requests[-1]["headers"]
    assert "user-agent" not in sent
    assert sent["accept-encoding"] == "identity"


def test_concurrent_calls_are_each_recorded_once_with_the_cost_they_were_answered_with(
    proxy: RunningProxy,
) -> None:
    """Calls finishing together are built and written in batches: each is answered with its own
    event id and cost, and each is in the ledger and the audit log exactly once."""
    import asyncio

    sess = session_id()
    ledger: Any = proxy.services.ledger
    writes_before = ledger._audit._written
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{proxy.url}/burst/v1/chat/completions",
                        json=body,
                        headers={"Authorization": "Bearer sk-test", "X-LLMBudget-Session": sess},
                    )
                    for _ in range(60)
                )
            )

    answers = asyncio.run(calls())
    assert [r.status_code for r in answers] == [200] * 60
    events = {e.id: e for e in proxy.wait_events(60, session=sess)}
    assert len(events) == 60
    for r in answers:
        event = events[r.headers["x-llmbudget-request-id"]]
        assert event.cost_usd is not None
        assert r.headers["x-llmbudget-cost-usd"] == format(event.cost_usd.normalize(), "f")
    audit_ids = [
        json.loads(line)["id"] for line in Path(ledger.audit_path).read_text().splitlines() if sess in line
    ]
    assert sorted(audit_ids) == sorted(events)
    # several calls shared one write of the audit log (the batch), and none was written twice
    assert ledger._audit._written - writes_before < 60


def test_a_cookie_set_by_an_upstream_never_reaches_another_clients_call(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """The proxy's one upstream session is shared by every client: it keeps no cookies, so what a
    provider's edge sets in one client's answer is never sent upstream with anyone's next call."""
    port = fake.url.rsplit(":", 1)[1]
    config = Config.model_validate(  # a host name: aiohttp's cookie jar keeps no cookies of IP hosts
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": f"http://localhost:{port}", "provider": "openai"}
            }
        }
    )
    with running_proxy(config, tmp_path / "ledger.db") as running:
        first = httpx.get(
            f"{running.url}/openai/v1/models",
            headers={"Authorization": "Bearer sk-one", "x-fake-set-cookie": "edge=abc123; Path=/"},
        )
        assert first.status_code == 200 and "edge=abc123" in first.headers.get("set-cookie", "")
        second = httpx.post(
            f"{running.url}/openai/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-two"},
        )
        assert second.status_code == 200
        sent = fake.requests[-1]["headers"]
        assert sent["authorization"] == "Bearer sk-two"
        assert "cookie" not in {k.lower() for k in sent}
