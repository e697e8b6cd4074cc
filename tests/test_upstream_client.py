"""The metered call's own HTTP/1.1 client, against an upstream whose every byte the test writes.

A raw asyncio TCP server (no HTTP library) answers as told by the request's `x-mode` header:
keep-alive, `Connection: close`, a silent close of idle connections, chunked and close-delimited
bodies, a `100 Continue` first, bytes that are not HTTP, a head and then silence. Calls go through
the real proxy with the official openai SDK or plain HTTP; every call is either metered from the
answer or a 502 in the protocol's shape recorded with its reason.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import trustme
from fakes.servers import RunningProxy, running_proxy

from llmbudget.config import Config

ANSWER = json.dumps(
    {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
).encode()


#: what the "flood" answer streams
FLOOD_BYTES = 48 * 1024 * 1024


class RawUpstream:
    """HTTP/1.1 written by hand, so the edges of the protocol are the test's to choose."""

    def __init__(self) -> None:
        self.connections = 0
        #: bytes of the "flood" answer the upstream got rid of so far
        self.flood_sent = 0
        #: each request's head as received (request line and headers)
        self.heads: list[bytes] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RawUpstream:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/base"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
                fields = {k.lower(): v for k, v in fields.items()}
                await reader.readexactly(int(fields.get(b"content-length", b"0")))
                mode = fields.get(b"x-mode", b"keep").decode()
                if not await self._answer(mode, writer):
                    return
        finally:
            writer.close()

    async def _answer(self, mode: str, w: asyncio.StreamWriter) -> bool:
        """Write the answer `mode` asks for; False when the connection ends with it."""
        json_head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if mode == "keep":
            w.write(json_head + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
        elif mode == "close":
            w.write(json_head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(ANSWER) + ANSWER)
            await w.drain()
            return False
        elif mode == "idle-close":  # a complete keep-alive answer, then the server drops the idle connection
            w.write(json_head + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
            await w.drain()
            await asyncio.sleep(0.1)
            return False
        elif mode == "chunked":  # chunks split across writes, one with an extension
            w.write(json_head + b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(ANSWER), 40):
                part = ANSWER[i : i + 40]
                w.write(b"%x;ext=1\r\n" % len(part) + part + b"\r\n")
                await w.drain()
                await asyncio.sleep(0.001)
            w.write(b"0\r\n\r\n")
        elif mode == "eof":  # no length, no chunks: the body ends with the connection
            w.write(json_head + b"Connection: close\r\n\r\n" + ANSWER[:50])
            await w.drain()
            await asyncio.sleep(0.01)
            w.write(ANSWER[50:])
            await w.drain()
            return False
        elif mode == "continue":
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await w.drain()
            w.write(json_head + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
        elif mode == "flood":  # a long stream, as fast as the proxy reads it
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            line = (
                b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
                + b"x" * 900
                + b'"}}]}\n\n'
            )
            piece = line * 64
            self.flood_sent = 0
            while self.flood_sent < FLOOD_BYTES:
                w.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                await w.drain()
                self.flood_sent += len(piece)
            w.write(b"0\r\n\r\n")
        elif mode == "twice":  # two answers to one request in one write: the connection is out of step
            one = json_head + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER
            w.write(one + one.replace(b"hello", b"HIJACK"))
        elif mode == "huge-head":
            w.write(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 4000 + b"\r\n")
            for _ in range(100):
                w.write(b"x-more: " + b"b" * 4000 + b"\r\n")
                await w.drain()
            await asyncio.sleep(0.5)
            return False
        elif mode == "garbage":
            w.write(b"\x00\x01not http at all\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.5)
            return False
        elif mode == "stall":  # the head, half the body, then nothing
            w.write(json_head + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER[:20])
            await w.drain()
            await asyncio.sleep(30)
            return False
        elif mode == "cut":  # the head, half the body, then the connection is closed
            w.write(json_head + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER[:20])
            await w.drain()
            return False
        await w.drain()
        return True


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    server = RawUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    config = Config.model_validate(
        {
            "backends": {
                "raw": {
                    "kind": "openai",
                    "base_url": upstream.url,
                    "provider": "openai",
                    "timeout_s": 1.0,
                    "api_key_env": "LLMB_TEST_RAW_KEY",
                }
            }
        }
    )
    with running_proxy(config, tmp_path_factory.mktemp("raw") / "ledger.db") as running:
        yield running


def chat(proxy: RunningProxy, mode: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/raw/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-mode": mode, "authorization": "Bearer sk-client", **extra},
        timeout=15,
    )


def event_of(proxy: RunningProxy, response: httpx.Response) -> Any:
    rid = response.headers["x-llmbudget-request-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [e for e in proxy.events() if e.id == rid]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no event {rid}")


def test_calls_share_one_kept_alive_connection(proxy: RunningProxy, upstream: RawUpstream) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/raw/v1", api_key="sk-client", max_retries=0)
    before = upstream.connections
    for _ in range(20):
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mode": "keep"},
        )
        assert answer.usage is not None and answer.usage.completion_tokens == 7
    assert upstream.connections - before == 1
    ids = [e for e in proxy.events() if e.backend == "raw" and e.output_tokens == 7]
    assert len(ids) >= 20


@pytest.mark.parametrize("mode", ["close", "idle-close", "chunked", "eof", "continue"])
def test_every_framing_of_an_answer_is_metered(mode: str, proxy: RunningProxy, upstream: RawUpstream) -> None:
    for _ in range(3):  # a connection the upstream ended is never reused for the next call
        r = chat(proxy, mode)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 7
        assert r.content == ANSWER
        event = event_of(proxy, r)
        assert (event.input_tokens, event.output_tokens, event.status) == (11, 7, "ok")
        if mode == "idle-close":
            time.sleep(0.3)  # the upstream has dropped the idle connection by now


@pytest.mark.parametrize(
    ("mode", "cause"),
    [
        ("garbage", "ClientPayloadError"),
        ("stall", "ServerTimeoutError"),
        ("cut", "ClientPayloadError"),
        ("huge-head", "ClientPayloadError"),
    ],
)
def test_a_broken_answer_is_a_502_recorded_with_its_cause(
    mode: str, cause: str, proxy: RunningProxy, upstream: RawUpstream
) -> None:
    started = time.monotonic()
    r = chat(proxy, mode)
    assert r.status_code == 502
    assert time.monotonic() - started < 10  # the backend's timeout_s (1 s) bounds a silent upstream
    error = r.json()["error"]
    assert error["code"] == "upstream_unreachable" and cause in error["message"]
    event = event_of(proxy, r)
    assert event.status == "error" and event.http_status == 502 and cause in (event.reason or "")
    # and the next call is served on a good connection
    assert chat(proxy, "keep").status_code == 200


def test_the_request_head_goes_out_as_the_backend_needs_it(
    proxy: RunningProxy, upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMB_TEST_RAW_KEY", "sk-operator\n")  # pasted with its newline
    r = httpx.post(
        f"{proxy.url}/raw/v1/chat/completions?x=1",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-mode": "keep", "x-llmbudget-agent": "head-check"},
        timeout=15,
    )
    assert r.status_code == 200, r.text
    head = upstream.heads[-1].decode("latin-1")
    lines = head.split("\r\n")
    assert lines[0] == "POST /base/v1/chat/completions?x=1 HTTP/1.1"
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    assert fields["host"] == f"127.0.0.1:{upstream.port}"
    assert fields["authorization"] == "Bearer sk-operator"  # the operator's key, newline stripped
    assert fields["accept-encoding"] == "identity"
    assert int(fields["content-length"]) > 0
    assert not any(k.startswith("x-llmbudget-") for k in fields)  # attribution is never forwarded
    assert event_of(proxy, r).agent == "head-check"


def test_a_second_answer_to_one_request_is_never_taken_for_the_next_call(
    proxy: RunningProxy, upstream: RawUpstream
) -> None:
    r = chat(proxy, "twice")
    assert r.status_code == 200 and r.content == ANSWER
    before = upstream.connections
    for _ in range(3):
        nxt = chat(proxy, "keep")
        assert nxt.status_code == 200 and b"HIJACK" not in nxt.content
    assert upstream.connections - before == 1  # a fresh connection, then kept alive again


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """An HTTPS upstream on 127.0.0.1 with a certificate from a test CA, and that CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []
    servers: list[asyncio.Server] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx))
        servers.append(server)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    pem = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    yield f"https://127.0.0.1:{port[0]}", pem

    async def close() -> None:
        for server in servers:
            server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    asyncio.run_coroutine_threadsafe(close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.mark.parametrize("trusted", [True, False])
def test_an_https_upstream_is_verified_against_the_systems_trust_store(
    trusted: bool,
    tls_upstream: tuple[str, Any],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, ca_pem = tls_upstream
    if trusted:  # the test CA trusted the way an operator trusts a private CA: SSL_CERT_FILE
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    else:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    config = Config.model_validate(
        {"backends": {"tls": {"kind": "openai", "base_url": url, "provider": "openai"}}}
    )
    with running_proxy(config, tmp_path / "ledger.db") as running:
        r = httpx.post(
            f"{running.url}/tls/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": "Bearer sk-client"},
            timeout=15,
        )
        if trusted:
            assert r.status_code == 200 and r.content == ANSWER
            assert event_of(running, r).output_tokens == 7
        else:  # an upstream whose certificate is not trusted is never spoken to
            assert r.status_code == 502
            assert "SSL" in r.json()["error"]["message"] or "Certificate" in r.json()["error"]["message"]
            assert event_of(running, r).status == "error"


def test_a_stream_the_client_reads_slowly_is_read_from_the_upstream_no_faster(
    proxy: RunningProxy, upstream: RawUpstream
) -> None:
    """Back-pressure: while the client reads nothing, the proxy stops reading the upstream after a
    bounded amount (its own buffer and the sockets'), and every byte arrives once the client reads."""
    with httpx.stream(
        "POST",
        f"{proxy.url}/raw/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-mode": "flood", "authorization": "Bearer sk-client"},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        received = len(next(chunks))
        time.sleep(1.5)  # the client reads nothing: the upstream must be held back
        held_at = upstream.flood_sent
        assert held_at < FLOOD_BYTES // 2, held_at
        for chunk in chunks:
            received += len(chunk)
    assert upstream.flood_sent >= FLOOD_BYTES  # resumed once the client read, to the end
    assert received >= FLOOD_BYTES  # every line passed on (the proxy adds at most an end marker)
    event = event_of(proxy, r)
    # the upstream ended its stream without a usage chunk or [DONE]: recorded, as cut short
    assert event.streamed and event.status == "interrupted"


def test_a_configured_key_with_a_line_break_inside_is_never_sent(
    proxy: RunningProxy, upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMB_TEST_RAW_KEY", "sk-operator\r\nX-Smuggled: 1")
    sent = len(upstream.heads)
    r = httpx.post(
        f"{proxy.url}/raw/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-mode": "keep"},
        timeout=15,
    )
    assert r.status_code == 502 and "sk-operator" not in r.text  # refused, the key not shown
    assert len(upstream.heads) == sent  # nothing reached the upstream
    assert not any(b"x-smuggled" in h.lower() for h in upstream.heads)
    event = event_of(proxy, r)
    assert event.status == "error" and event.http_status == 502
    # an unmetered call (aiohttp's way upstream) is refused the same way, not a 500
    models = httpx.get(f"{proxy.url}/raw/v1/models", headers={"x-mode": "keep"}, timeout=15)
    assert models.status_code == 502 and "sk-operator" not in models.text
    assert not any(b"x-smuggled" in h.lower() for h in upstream.heads)
