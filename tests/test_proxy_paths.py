"""The path means one thing: what the proxy matches is exactly what it forwards, for every protocol.

Requests are sent byte for byte with `http.client` (an HTTP library would normalise the path
first); the fake upstream records the raw path it received.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.capture.paths import PathRefused, read_path
from llmbudget.config import Config

GEMINI_EP = f"/v1beta/models/{fx.GEMINI_MODEL}:generateContent"
#: protocol -> (backend prefix, endpoint path, a valid body)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "openai": (
        "openai",
        "/v1/chat/completions",
        {"model": fx.OPENAI_CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "anthropic": (
        "anthropic",
        "/v1/messages",
        {"model": fx.ANTHROPIC_MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "gemini": ("gemini", GEMINI_EP, {"contents": [{"parts": [{"text": "hi"}]}]}),
}


def _refused_forms(ep: str) -> list[str]:
    """Every way to make `ep` mean two things (or climb out of the base path)."""
    head, _, last = ep.rpartition("/")
    return [
        ep + "%3F",
        ep + "%3Fbeta=true",
        ep + "%3falt=json",
        ep + "%23",
        ep + "%23frag",
        f"{head}%2F{last}",
        f"{head}%2f{last}",
        f"{head}%5C{last}",
        f"{head}/x/../{last}",
        f"{head}/x/%2e%2e/{last}",
        f"{head}/x/%2E%2E/{last}",
        f"{head}/./{last}",
        f"{head}/%2e/{last}",
        f"/../..{ep}",
        f"/%2e%2e/%2e%2e{ep}",
        f"{head}/{last}%0d%0aX-Injected:%201",
        f"{head}/{last}%ff",
        # a path parameter, which servers that strip `;...` read as the endpoint itself
        ep + ";x",
        ep + ";",
        f"{head};v=1/{last}",
        ep + "%3B",
        ep + "%3bx",
        # encoded twice: a server (or a proxy in front of it) that decodes again sees `..` or `/`
        f"{head}/x/%252e%252e/{last}",
        f"{head}%252F{last}",
        f"{head}/{last}%2500",
        # white space a lenient server trims, and controls (NUL, C1)
        ep + "%20",
        ep + "%20%20",
        f"{head}/%20{last}",
        ep + "%C2%A0",
        ep + "%00",
        f"{head}/{last}%00x",
        ep + "%C2%85",
        # look-alikes that a server folding compatibility forms reads as `/` or `..`
        f"{head}%EF%BC%8F{last}",
        f"{head}/x/%EF%BC%8E%EF%BC%8E/{last}",
    ]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    # a base_url with a path of its own: nothing may climb out of it
    base = fake.url + "/base"
    config = Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": base, "provider": "openai"},
                "anthropic": {"kind": "anthropic", "base_url": base, "provider": "anthropic"},
                "gemini": {"kind": "gemini", "base_url": base, "provider": "google"},
            }
        }
    )
    with running_proxy(config, tmp_path_factory.mktemp("paths") / "ledger.db") as running:
        yield running


def send_raw(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST `body` to `path`, sent exactly as written."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        payload = json.dumps(body).encode()
        conn.putrequest("POST", path, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def assert_protocol_error(protocol: str, body: dict[str, Any]) -> str:
    """The error is in the protocol's own shape; returns its message."""
    if protocol == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        return str(body["error"]["message"])
    if protocol == "gemini":
        assert body["error"]["code"] == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        return str(body["error"]["message"])
    assert body["error"]["code"] == "invalid_path"
    return str(body["error"]["message"])


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_every_ambiguous_form_is_refused_before_the_upstream(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    prefix, ep, body = CASES[protocol]
    for form in _refused_forms(ep):
        before = len(fake.requests)
        status, answer = send_raw(proxy.url, f"/{prefix}{form}", body)
        assert status == 400, (form, answer)
        assert "path" in assert_protocol_error(protocol, answer), form
        assert len(fake.requests) == before, f"{form} reached the upstream"


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_a_harmless_encoding_is_decoded_once_matched_and_forwarded_as_matched(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    prefix, ep, body = CASES[protocol]
    # `%63` is `c`, `%3A` is `:`: the same endpoint, so it must be metered like the plain one
    encoded = ep.replace("/v1", "/%76%31").replace(":generate", "%3Agenerate")
    before = len(proxy.events(backend=prefix))
    status, answer = send_raw(proxy.url, f"/{prefix}{encoded}", body)
    assert status == 200, answer
    got = fake.requests[-1]
    assert got["raw_path"] == "/base" + ep  # forwarded exactly as it was matched, inside the base path
    assert len(proxy.wait_events(before + 1, backend=prefix)) == before + 1  # and metered


def test_an_encoded_backend_prefix_names_the_same_backend(proxy: RunningProxy, fake: FakeUpstream) -> None:
    _, ep, body = CASES["openai"]
    status, _ = send_raw(proxy.url, "/%6fpenai" + ep, body)
    assert status == 200
    assert fake.requests[-1]["raw_path"] == "/base" + ep


def test_unusual_but_single_meaning_characters_are_forwarded_encoded(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    status, _ = send_raw(proxy.url, "/openai/v1/files/a%20b%25c", {})
    assert status == 404  # the fake has no such route: what matters is what it received
    assert fake.requests[-1]["raw_path"] == "/base/v1/files/a%20b%25c"


@pytest.mark.parametrize(
    ("raw", "backend", "rest", "forward"),
    [
        (b"/openai/v1/chat/completions", "openai", "/v1/chat/completions", "/v1/chat/completions"),
        (b"/openai", "openai", "/", "/"),
        (b"/g/v1beta/models/m%3AgenerateContent", "g", "/v1beta/models/m:generateContent", None),
        (b"/o/a%20b/%C3%A9", "o", "/a b/\u00e9", "/a%20b/%C3%A9"),
        (b"/o//a//b//", "o", "/a/b//", None),
        (b"/o/a%25b", "o", "/a%b", "/a%25b"),
        (b"/o/%EF%BD%81", "o", "/\uff41", "/%EF%BD%81"),
    ],
)
def test_read_path(raw: bytes, backend: str, rest: str, forward: str | None) -> None:
    p = read_path(raw)
    assert (p.backend, p.rest) == (backend, rest)
    assert p.forward == (forward or rest)


@pytest.mark.parametrize(
    "raw",
    [
        b"/o/a%2Fb",
        b"/o/..",
        b"/o/%2e",
        b"/o/a%5cb",
        b"/o/%00",
        b"x",
        b"/o/%C3",
        b"/o/a;b",
        b"/o/a%3Bb",
        b"/o/%252e%252e",
        b"/o/a%20",
        b"/o/%E2%80%83a",
        b"/o/%EF%BC%8F",
    ],
)
def test_read_path_refuses(raw: bytes) -> None:
    with pytest.raises(PathRefused):
        read_path(raw)


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_empty_segments_inside_the_path_are_merged_before_matching_and_forwarding(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    """`a//b` is `a/b` to most servers (nginx merges them): matched and forwarded as `a/b`, so metered."""
    prefix, ep, body = CASES[protocol]
    head, _, last = ep.rpartition("/")
    for form in (f"/{ep}", f"{head}//{last}", ep.replace("/", "//")):
        before = len(proxy.events(backend=prefix))
        status, answer = send_raw(proxy.url, f"/{prefix}{form}", body)
        assert status == 200, (form, answer)
        assert fake.requests[-1]["raw_path"] == "/base" + ep, form
        assert len(proxy.wait_events(before + 1, backend=prefix)) == before + 1, f"{form} went unmetered"


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_a_trailing_slash_after_the_endpoint_is_still_metered(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    """An upstream may serve `.../completions/` or `...:generateContent/` as the endpoint itself."""
    prefix, ep, body = CASES[protocol]
    for form in (ep + "/", ep + "//"):
        before = len(proxy.events(backend=prefix))
        send_raw(proxy.url, f"/{prefix}{form}", body)
        assert fake.requests[-1]["raw_path"] == "/base" + form
        assert len(proxy.wait_events(before + 1, backend=prefix)) == before + 1, f"{form} went unmetered"
