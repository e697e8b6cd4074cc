"""WebSocket metering through the real proxy (uvicorn on 127.0.0.1) against a fake OpenAI WebSocket upstream.

The client is the `websockets` library, as Codex's and the Realtime SDKs' connections look on the
wire: the Responses API over WebSocket (`/openai/v1/responses`, `response.create` frames) and the
Realtime API (`/openai/v1/realtime?model=...`). Events are read back from the ledger.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websockets.exceptions
import websockets.sync.client as wsclient
from fakes import ws_upstream as fx
from fakes.servers import RunningProxy, running_proxy
from fakes.ws_upstream import FakeWebSocketUpstream

from llmbudget.config import Config
from llmbudget.pricing import PriceBook
from llmbudget.pricing.normalize import openai_realtime_usage, openai_responses_usage

#: the headers Codex CLI sends with its Responses WebSocket upgrade (codex-rs default_client.rs,
#: codex-api build_session_headers; the auth header is the provider key)
CODEX_HEADERS = {
    "user-agent": "codex_cli_rs/0.172.0 (Ubuntu 24.4.0; x86_64) xterm-256color",
    "originator": "codex_cli_rs",
    "version": "0.172.0",
    "openai-beta": "responses_websockets=2026-02-06",
    "authorization": "Bearer sk-client-key",
}
PLANTED = "sk-PLANTEDwsquery0000000000000000000099"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeWebSocketUpstream]:
    server = FakeWebSocketUpstream().start()
    yield server
    server.stop()


def config(fake_url: str, **top: Any) -> Config:
    return Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": fake_url, "provider": "openai"},
                "gemini": {"kind": "gemini", "base_url": fake_url, "provider": "google"},
            },
            **top,
        }
    )


@pytest.fixture(scope="module")
def proxy(fake: FakeWebSocketUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with running_proxy(config(fake.url), tmp_path_factory.mktemp("ws") / "ledger.db") as running:
        yield running


def ws_url(proxy: RunningProxy, path: str) -> str:
    return proxy.url.replace("http://", "ws://") + path


def read_until(ws: Any, kind: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Every event up to and including the first of type `kind`."""
    seen = []
    while True:
        frame = json.loads(ws.recv(timeout=timeout))
        seen.append(frame)
        if frame.get("type") == kind:
            return seen


def price(model: str, usage: Any) -> Decimal:
    cost = PriceBook().cost(model, usage, provider="openai").cost_usd
    assert cost is not None
    return cost


def test_two_responses_on_one_connection_are_metered_exactly(
    proxy: RunningProxy, fake: FakeWebSocketUpstream
) -> None:
    sid = str(uuid.uuid4())
    headers = {**CODEX_HEADERS, "session-id": sid}
    with wsclient.connect(ws_url(proxy, "/openai/v1/responses"), additional_headers=headers) as ws:
        # the upstream's upgrade headers reach the client (Codex reads x-models-etag, openai-model)
        assert ws.response is not None and ws.response.headers["x-models-etag"] == "etag-1"
        ws.send(json.dumps({"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "hi"}))
        first = read_until(ws, "response.completed")
        ws.send(
            json.dumps(
                {
                    "type": "response.create",
                    "model": fx.RESPONSES_MODEL,
                    "input": "again",
                    "metadata": {"fake_input": "3000", "fake_output": "240"},
                }
            )
        )
        second = read_until(ws, "response.completed")
    assert [f["type"] for f in first] == [
        "response.created",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.completed",
    ]
    events = proxy.wait_events(2, session=sid)
    assert len(events) == 2
    ids = [first[-1]["response"]["id"], second[-1]["response"]["id"]]
    for event, final in zip(events, (first[-1], second[-1]), strict=True):
        usage = final["response"]["usage"]
        assert ids[0] != ids[1]
        assert event.source == "proxy" and event.streamed is True and event.status == "ok"
        assert event.model == fx.RESPONSES_MODEL and event.backend == "openai"
        assert event.input_tokens == usage["input_tokens"]
        assert event.output_tokens == usage["output_tokens"]
        assert event.cached_input_tokens == 1024 and event.reasoning_tokens == 64
        assert event.cost_usd == price(fx.RESPONSES_MODEL, openai_responses_usage(usage))
        # attributed from Codex's own upgrade headers
        assert event.agent == "codex" and event.session == sid
    assert events[1].input_tokens == 3000 and events[1].output_tokens == 240
    # the client's key went upstream (relay open on loopback), the handshake headers did not leak
    sent = fake.connections[-1]
    assert sent["headers"]["authorization"] == "Bearer sk-client-key"
    assert sent["headers"]["session-id"] == sid
    assert "origin" not in sent["headers"] and "x-llmbudget-session" not in sent["headers"]


def test_realtime_response_done_is_metered_with_audio_and_cache(
    proxy: RunningProxy, fake: FakeWebSocketUpstream
) -> None:
    sid = str(uuid.uuid4())
    url = ws_url(proxy, f"/openai/v1/realtime?model={fx.REALTIME_MODEL}")
    with wsclient.connect(
        url,
        additional_headers={"X-LLMBudget-Session": sid, "X-LLMBudget-Agent": "voice"},
        subprotocols=["realtime"],
    ) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
        ws.send(
            json.dumps({"type": "response.create", "event_id": "c1", "response": {"modalities": ["audio"]}})
        )
        frames = read_until(ws, "response.done")
    assert frames[-1]["response"]["usage"] == fx.REALTIME_USAGE
    [event] = proxy.wait_events(1, session=sid)
    assert event.agent == "voice" and event.model == fx.REALTIME_MODEL and event.streamed is True
    assert (event.input_tokens, event.cached_input_tokens, event.output_tokens) == (1000, 200, 300)
    assert event.units == {
        "input_audio_tokens": 600,
        "cache_audio_read_tokens": 100,
        "output_audio_tokens": 200,
    }
    assert event.cost_usd == price(fx.REALTIME_MODEL, openai_realtime_usage(fx.REALTIME_USAGE))
    # the URL's query (the model) went upstream
    assert fake.connections[-1]["query"] == f"model={fx.REALTIME_MODEL}"


def test_frames_pass_in_order_both_ways_text_binary_ping_and_close_codes(proxy: RunningProxy) -> None:
    url = ws_url(proxy, f"/openai/v1/realtime?model={fx.REALTIME_MODEL}")
    with wsclient.connect(url) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
        sent: list[str | bytes] = []
        for i in range(20):
            frame: str | bytes = (
                bytes([i]) * (i + 1) + b"\x00\xff" if i % 3 == 0 else json.dumps({"type": "input.x", "n": i})
            )
            sent.append(frame)
            ws.send(frame)
        back = [ws.recv(timeout=5) for _ in sent]
        assert ws.ping().wait(5)  # answered on this hop
        ws.send(json.dumps({"type": "fake.close", "code": 4002, "reason": "done here"}))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=5)
    expected = [f if isinstance(f, bytes) else json.dumps({"type": "echo", "data": f}) for f in sent]
    assert back == expected
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "done here")


def test_the_clients_close_code_reaches_the_upstream(
    proxy: RunningProxy, fake: FakeWebSocketUpstream
) -> None:
    sid = str(uuid.uuid4())
    with wsclient.connect(
        ws_url(proxy, "/openai/v1/responses"), additional_headers={"session-id": sid}
    ) as ws:
        ws.send(json.dumps({"type": "ping.me"}))
        ws.recv(timeout=5)
        ws.close(code=4005, reason="client done")
    deadline = time.monotonic() + 5
    record = next(c for c in fake.connections if c["headers"].get("session-id") == sid)
    while "close_code" not in record and time.monotonic() < deadline:
        time.sleep(0.02)
    assert record.get("close_code") == 4005


def test_client_close_mid_response_records_it_interrupted(proxy: RunningProxy) -> None:
    sid = str(uuid.uuid4())
    headers = {"x-fake": "hold", "X-LLMBudget-Session": sid}
    with wsclient.connect(ws_url(proxy, "/openai/v1/responses"), additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "x" * 400}))
        read_until(ws, "response.output_text.delta")
        ws.close(code=1000)
    [event] = proxy.wait_events(1, session=sid)
    assert event.status == "interrupted" and event.model == fx.RESPONSES_MODEL
    assert event.input_tokens >= 100  # estimated from the request (400 characters)
    assert event.output_tokens == -(-len(fx.DELTA) // 4)  # the text that was streamed, estimated


@pytest.mark.parametrize("mode", ["close", "cut"])
def test_upstream_close_mid_response_records_it_interrupted(proxy: RunningProxy, mode: str) -> None:
    sid = str(uuid.uuid4())
    headers = {"x-fake": mode, "X-LLMBudget-Session": sid}
    with wsclient.connect(ws_url(proxy, "/openai/v1/responses"), additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "hi"}))
        read_until(ws, "response.output_text.delta")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=10)
    rcvd = closed.value.rcvd
    assert rcvd is not None
    # the upstream's close code goes to the client; a vanished upstream is 1011
    assert (rcvd.code, rcvd.reason) == (
        (4001, "fake upstream closed") if mode == "close" else (1011, rcvd.reason)
    )
    [event] = proxy.wait_events(1, session=sid)
    assert event.status == "interrupted" and event.output_tokens == -(-len(fx.DELTA) // 4)
    if mode == "cut":
        assert "upstream connection was lost" in (event.reason or "")


def test_refusals_before_the_upgrade(proxy: RunningProxy) -> None:
    def status(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            wsclient.connect(ws_url(proxy, path), additional_headers=headers or {}, open_timeout=5).close()
        resp = e.value.response
        return resp.status_code, json.loads(resp.body or b"{}")

    code, body = status(
        "/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key=x"
    )
    assert code == 400 and "Gemini Live" in body["error"]["message"]
    code, body = status("/openai/v1/chat/completions")
    # 426: Codex falls back to HTTPS at once instead of retrying
    assert code == 426 and body["error"]["code"] == "websocket_not_supported"
    # an upstream without WebSocket mode: 426 as well, so the client's HTTP call goes through at once
    code, body = status("/openai/v1/responses", {"x-fake": "no-websocket"})
    assert code == 426 and body["error"]["code"] == "upstream_refused"
    # a web page cannot open a metered socket (WebSockets have no CORS)
    code, _ = status("/openai/v1/responses", {"Origin": "https://evil.example"})
    assert code == 403


def test_the_query_is_never_logged(proxy: RunningProxy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = ws_url(proxy, f"/openai/v1/realtime?model={fx.REALTIME_MODEL}&api_key={PLANTED}")
    with wsclient.connect(url) as ws:
        ws.recv(timeout=5)
        ws.send(json.dumps({"type": "response.create"}))
        read_until(ws, "response.done")
    with pytest.raises(websockets.exceptions.InvalidStatus):
        wsclient.connect(ws_url(proxy, f"/openai/v1/files?key={PLANTED}"), open_timeout=5).close()
    time.sleep(0.1)
    # the server's records (the test's own client library logs its own handshake, not ours)
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "proxy_ws_open backend=openai path=/v1/realtime" in text
    assert PLANTED not in text and PLANTED[3:20] not in text


def test_budget_refuses_mid_connection_then_the_upgrade(fake: FakeWebSocketUpstream, tmp_path: Path) -> None:
    cfg = config(fake.url, budgets={"daily_limit_usd": "0.01", "timezone": "UTC"})
    sid = str(uuid.uuid4())
    headers = {**CODEX_HEADERS, "session-id": sid}
    with running_proxy(cfg, tmp_path / "ledger.db") as proxy:
        with wsclient.connect(ws_url(proxy, "/openai/v1/responses"), additional_headers=headers) as ws:
            big = {"fake_output": "2000"}  # reported beyond what was reserved: charged in full
            create = {
                "type": "response.create",
                "model": fx.RESPONSES_MODEL,
                "input": "hi",
                "max_output_tokens": 100,
            }
            ws.send(json.dumps({**create, "metadata": big}))
            read_until(ws, "response.completed")
            proxy.wait_events(1, session=sid)
            # the reservation settles in the background, spawned before the frame went out
            deadline = time.monotonic() + 10
            while proxy.app.proxy.recorder.pending and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not proxy.app.proxy.recorder.pending
            ws.send(json.dumps(create))
            err = json.loads(ws.recv(timeout=5))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert err["type"] == "error" and err["status"] == 429
        assert err["error"]["code"] == "budget_exceeded" and "budget" in err["error"]["message"]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        # reconnecting: refused before the upgrade, with an HTTP 429 in OpenAI's error shape
        t0 = time.perf_counter()
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            wsclient.connect(ws_url(proxy, "/openai/v1/responses"), additional_headers=headers).close()
        took = time.perf_counter() - t0
        resp = refused.value.response
        assert (
            resp.status_code == 429 and json.loads(resp.body or b"{}")["error"]["code"] == "budget_exceeded"
        )
        assert took < 2.0
        events = proxy.wait_events(3, session=sid)
        assert [e.status for e in events] == ["ok", "blocked", "blocked"]
        assert events[0].output_tokens == 2000 and events[0].cost_usd is not None
        assert events[0].cost_usd > Decimal("0.01")


def test_virtual_key_on_an_exposed_server(
    fake: FakeWebSocketUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmbudget.access.policy import AccessPolicy
    from llmbudget.keys import make_key
    from llmbudget.store.keys import KeyStore

    monkeypatch.setenv("LLMB_OAI", "sk-operator-openai")
    exposed = AccessPolicy(
        bind_host="0.0.0.0", token=b"admin-token-1234", token_missing=False, allowed_hosts=()
    )
    cfg = Config.model_validate(
        {"backends": {"openai": {"kind": "openai", "base_url": fake.url, "api_key_env": "LLMB_OAI"}}}
    )
    with running_proxy(cfg, tmp_path / "ledger.db", parts={"access": exposed}) as proxy:
        key, secret = make_key("ci-bot", agent="ci", team="platform")
        KeyStore(proxy.services.ledger).add(key)
        url = ws_url(proxy, "/openai/v1/responses")
        # no key on an exposed server: refused before the upgrade, in OpenAI's shape
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            wsclient.connect(url, additional_headers={"session-id": "x"}).close()
        assert refused.value.response.status_code == 401
        sid = str(uuid.uuid4())
        headers = {
            # Codex's own headers would infer agent codex and its session
            **{k: v for k, v in CODEX_HEADERS.items() if k != "authorization"},
            "session-id": str(uuid.uuid4()),
            "Authorization": f"Bearer {secret}",
            "X-LLMBudget-Session": sid,
            "X-LLMBudget-Agent": "other",
        }
        with wsclient.connect(url, additional_headers=headers) as ws:
            ws.send(json.dumps({"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "hi"}))
            read_until(ws, "response.completed")
        [event] = proxy.wait_events(1, session=sid)
    # the key fixes its attribution (neither a header nor the client's inferred agent overrides it),
    # the explicit session beats Codex's own, and the key is swapped for the backend's
    assert (event.key, event.agent, event.team, event.session) == ("ci-bot", "ci", "platform", sid)
    assert fake.connections[-1]["headers"]["authorization"] == "Bearer sk-operator-openai"
    assert secret not in json.dumps(fake.connections[-1]["headers"])


def test_the_attribution_prefix_works_for_an_upgrade_too(
    proxy: RunningProxy, fake: FakeWebSocketUpstream
) -> None:
    sid = f"ws {uuid.uuid4().hex[:8]}"
    url = ws_url(proxy, f"/_llmb/session={sid.replace(' ', '%20')}/agent=ws-agent/openai/v1/responses")
    with wsclient.connect(url, additional_headers=CODEX_HEADERS) as ws:
        ws.send(json.dumps({"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "hi"}))
        read_until(ws, "response.completed")
    [event] = proxy.wait_events(1, session=sid)
    # the path's agent ranks above what Codex's headers would infer (codex)
    assert event.agent == "ws-agent" and event.backend == "openai" and event.streamed is True
    sent = fake.connections[-1]
    assert sent["path"] == "/v1/responses" and not [h for h in sent["headers"] if h.startswith("x-llmbudget")]
    for path, code in (
        ("/_llmb/session=a%2Fb/openai/v1/responses", 400),
        ("/_llmb/session=s/nosuch/v1", 404),
    ):
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            wsclient.connect(ws_url(proxy, path), additional_headers=CODEX_HEADERS, open_timeout=5).close()
        assert e.value.response.status_code == code, path
