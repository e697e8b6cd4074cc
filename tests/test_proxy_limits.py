"""Bounded input at the proxy and API edges: body size, attribution header length, JSON depth, dates, log lines."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget import logsafe
from llmbudget.config import Config

GEMINI_EP = f"/v1beta/models/{fx.GEMINI_MODEL}:generateContent"
ENDPOINTS = {
    "openai": "/openai/v1/chat/completions",
    "anthropic": "/anthropic/v1/messages",
    "gemini": "/gemini" + GEMINI_EP,
}
BODIES: dict[str, dict[str, Any]] = {
    "openai": {"model": fx.OPENAI_CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "anthropic": {
        "model": fx.ANTHROPIC_MODEL,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    },
    "gemini": {"contents": [{"parts": [{"text": "hi"}]}]},
}
MB = 1024 * 1024


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    config = Config.model_validate(
        {
            "server": {"max_body_mb": 1},
            "backends": {
                "openai": {"kind": "openai", "base_url": fake.url, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": fake.url, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": fake.url, "provider": "google"},
            },
        }
    )
    with running_proxy(config, tmp_path_factory.mktemp("limits") / "ledger.db") as running:
        yield running


def error_message(protocol: str, body: dict[str, Any]) -> str:
    if protocol == "anthropic":
        assert body["type"] == "error"
    else:
        assert isinstance(body["error"], dict)
    return str(body["error"]["message"])


def conn(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_a_declared_oversized_body_is_refused_before_it_is_read(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    before = len(fake.requests)
    c = conn(proxy.url)
    try:
        # announce 100 MB, send 10 bytes: the answer comes without the proxy waiting for the rest
        c.putrequest("POST", ENDPOINTS[protocol])
        c.putheader("Content-Type", "application/json")
        c.putheader("Content-Length", str(100 * MB))
        c.endheaders(b'{"model": ')
        resp = c.getresponse()
        assert resp.status == 413
        assert "max_body_mb" in error_message(protocol, json.loads(resp.read()))
    finally:
        c.close()
    assert len(fake.requests) == before


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_a_chunked_body_is_counted_as_it_arrives(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    before = len(fake.requests)
    c = conn(proxy.url)
    try:
        chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MB, no Content-Length
        c.request(
            "POST",
            ENDPOINTS[protocol],
            body=chunks,
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = c.getresponse()
        assert resp.status == 413
        assert "1 MB" in error_message(protocol, json.loads(resp.read()))
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the proxy closed the connection instead of answering 413")
    finally:
        c.close()
    assert len(fake.requests) == before


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_a_body_just_under_the_limit_goes_through(protocol: str, proxy: RunningProxy) -> None:
    body = dict(BODIES[protocol])
    body["padding"] = "x" * (MB - 1000)
    r = httpx.post(proxy.url + ENDPOINTS[protocol], json=body, timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_a_long_attribution_header_is_a_400_naming_it(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    before = len(fake.requests)
    r = httpx.post(
        proxy.url + ENDPOINTS[protocol],
        json=BODIES[protocol],
        headers={"X-LLMBudget-Agent": "a" * 257},
        timeout=10,
    )
    assert r.status_code == 400
    assert "x-llmbudget-agent" in error_message(protocol, r.json()).lower()
    assert len(fake.requests) == before
    ok = httpx.post(
        proxy.url + ENDPOINTS[protocol],
        json=BODIES[protocol],
        headers={"X-LLMBudget-Agent": ("\u00e9" * 256).encode()},  # 256 characters, 512 bytes: within bounds
        timeout=10,
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("protocol", sorted(ENDPOINTS))
def test_deeply_nested_json_is_a_400_in_the_protocols_shape(protocol: str, proxy: RunningProxy) -> None:
    deep = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(
        proxy.url + ENDPOINTS[protocol],
        content=deep,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    assert "nested too deeply" in error_message(protocol, r.json())


def test_the_server_keeps_serving_after_every_refusal(proxy: RunningProxy) -> None:
    r = httpx.post(proxy.url + ENDPOINTS["openai"], json=BODIES["openai"], timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "since=0001-01-01",
        "since=0000-01",
        "until=9999-12-31",
        "until=9999-12-31T23:59:59-05:00",
        "until=9999-12-31T23:59:59%2B14:00",
        "since=10000-01-01",
        "since=0001-01-01T00:00:00%2B14:00",
        "since=99999999999999d",
    ],
)
@pytest.mark.parametrize("route", ["/api/costs?by=day&", "/api/events?", "/api/sessions?"])
def test_a_date_outside_the_calendar_is_a_400(route: str, query: str, proxy: RunningProxy) -> None:
    if route == "/api/sessions?" and query.startswith("until"):
        query = "since" + query[5:]
    r = httpx.get(proxy.url + route + query, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] in ("since", "until")


def test_deeply_nested_json_to_the_api_is_a_400(proxy: RunningProxy) -> None:
    r = httpx.post(
        proxy.url + "/api/agents/x/pause",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid"


# ------------------------------------------------------------------ log lines


@pytest.mark.parametrize(
    ("text", "absent", "present"),
    [
        ("path=/x\r\n2026-01-01 INFO forged", ["\n", "\r"], ["\\r\\n2026"]),
        (
            '1.2.3.4 - "WebSocket /gemini/ws/x?key=AIzaSECRET" 403',
            ["AIzaSECRET"],
            ["/gemini/ws/x?[redacted]"],
        ),
        ("< GET /v1beta/models?key=AIzaSECRET&alt=sse HTTP/1.1", ["AIzaSECRET"], ["/v1beta/models?"]),
        ("< Authorization: Bearer sk-SECRET", ["sk-SECRET"], ["Authorization: [redacted]"]),
        ("< x-api-key: sk-ant-SECRET", ["sk-ant-SECRET"], ["x-api-key: [redacted]"]),
        ("url=https://h/p?alt=sse&key=AIzaSECRET", ["AIzaSECRET"], ["https://h/p?[redacted]"]),
        ("token bearer abc.def-SECRET here", ["abc.def-SECRET"], ["here"]),
        ("bell \x07 and esc \x1b[2J", ["\x07", "\x1b"], ["\\x07", "\\x1b[2J"]),
    ],
)
def test_log_lines_are_cleaned(text: str, absent: list[str], present: list[str]) -> None:
    out = logsafe.clean(text)
    for a in absent:
        assert a not in out
    for p in present:
        assert p in out


def test_every_record_is_cleaned_once_installed(caplog: pytest.LogCaptureFixture) -> None:
    previous = logging.getLogRecordFactory()
    logsafe.install()
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" 403', "1.2.3.4", "/g/ws?key=AIzaX1")
            try:
                raise ValueError("bad\nINFO forged line")
            except ValueError:
                logging.getLogger("llmbudget.test").exception("failed path=%s", "/a\r\nb")
        text = caplog.text
        assert "AIzaX1" not in text
        assert "/a\\r\\nb" in text
        assert not any(line.startswith("INFO forged") for line in text.splitlines())
    finally:
        logging.setLogRecordFactory(previous)
        logsafe._installed = False
