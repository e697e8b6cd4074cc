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

import httpx
import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.capture.paths import (
    MAX_VALUE_CHARS,
    PathRefused,
    prefix_path,
    prefix_refusal,
    read_path,
    read_prefix,
)
from llmbudget.capture.proxy import MAX_ATTRIBUTION_CHARS
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


# ---------------------------------------------------------------- the attribution prefix
PRE = "/_llmb/session=pr%208/agent=fixer"


@pytest.mark.parametrize(
    ("raw", "attribution", "rest_raw", "rest"),
    [
        (
            b"/_llmb/session=s1/agent=a1/openai/v1/chat/completions",
            {"session": "s1", "agent": "a1"},
            b"/openai/v1/chat/completions",
            "/openai/v1/chat/completions",
        ),
        (b"/_llmb/agent=a1/session=s1/o", {"agent": "a1", "session": "s1"}, b"/o", "/o"),
        (b"/_llmb/session=pr%208/o/a%20b", {"session": "pr 8"}, b"/o/a%20b", "/o/a b"),
        (b"/_llmb/agent=%C3%A9t%C3%A9/o/", {"agent": "\u00e9t\u00e9"}, b"/o/", "/o/"),
        # split on the first literal `=`; the rest is left as sent for the proxy to read
        (b"/_llmb/session=a=b%3Dc/o/x", {"session": "a=b=c"}, b"/o/x", "/o/x"),
        (b"/_llmb/session=50%25/%6f/x", {"session": "50%"}, b"/%6f/x", "/o/x"),
    ],
)
def test_read_prefix(raw: bytes, attribution: dict[str, str], rest_raw: bytes, rest: str) -> None:
    p = read_prefix(raw)
    assert (p.attribution, p.raw_path, p.path, p.backend) == (attribution, rest_raw, rest, rest.split("/")[1])


@pytest.mark.parametrize(
    "raw",
    [
        b"/_llmb/",
        b"/_llmb/openai/v1/chat/completions",  # no field
        b"/_llmb/session=s1",  # no backend
        b"/_llmb/session=s1/",
        b"/_llmb/session=s1//openai/v1",
        b"/_llmb/session=/openai/v1",
        b"/_llmb/session=%20%09/openai/v1",
        b"/_llmb/user=u/openai/v1",
        b"/_llmb/Session=s/openai/v1",
        b"/_llmb/%73ession=s/openai/v1",
        b"/_llmb/session=a/session=b/openai/v1",
        b"/_llmb/session=a%2Fb/openai/v1",
        b"/_llmb/session=a%5Cb/openai/v1",
        b"/_llmb/session=a%3Fb/openai/v1",
        b"/_llmb/session=a%23b/openai/v1",
        b"/_llmb/session=../openai/v1",
        b"/_llmb/session=%2e%2e/openai/v1",
        b"/_llmb/session=%20s/openai/v1",  # white space at either end, as in any path segment
        b"/_llmb/session=s%20/openai/v1",
        b"/_llmb/session=a;b/openai/v1",
        b"/_llmb/session=a%3Bb/openai/v1",
        b"/_llmb/session=%2541/openai/v1",  # encoded twice
        b"/_llmb/session=%EF%BC%8E%EF%BC%8E/openai/v1",  # a full-width '..'
        b"/_llmb/session=a%C2%85b/openai/v1",  # a C1 control
        b"/_llmb/session=a%0d%0aX-Injected:%201/openai/v1",
        b"/_llmb/session=%ff/openai/v1",
        b"/_llmb/session=" + b"x" * 257 + b"/openai/v1",
        b"/_llmb/session=" + b"%C3%A9" * 257 + b"/openai/v1",
        b"/_llmb/session=" + b"%41" * 100_000 + b"/openai/v1",  # refused before any decoding
    ],
)
def test_read_prefix_refuses(raw: bytes) -> None:
    with pytest.raises(PathRefused):
        read_prefix(raw)


def test_prefix_path_is_read_back_as_written() -> None:
    assert MAX_VALUE_CHARS == MAX_ATTRIBUTION_CHARS  # the same bound as an X-LLMBudget-* header
    for session, agent in [("pr 8", "fixer"), ("a=b,c@d:e", None), ("\u00e9%+", "x" * 256), ("s", "50%")]:
        p = read_prefix(prefix_path(session=session, agent=agent) + "/openai/v1")
        assert p.attribution == {"session": session, **({"agent": agent} if agent else {})}
        assert p.raw_path == b"/openai/v1"
    for bad in (
        "a/b",
        "..",
        ".",
        "",
        " ",
        "a\\b",
        "a?b",
        "a#b",
        "a;b",
        "%41",
        "\uff0e\uff0e",
        "a\nb",
        "x" * 257,
    ):
        with pytest.raises(ValueError):
            prefix_path(session=bad)
        assert prefix_refusal(bad) is not None


def test_a_prefixed_call_is_served_as_the_plain_path_and_attributed(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    for protocol, (prefix, ep, body) in CASES.items():
        before = len(proxy.events(backend=prefix, session="pr 8"))
        status, answer = send_raw(proxy.url, f"{PRE}/{prefix}{ep}", body)
        assert status == 200, (protocol, answer)
        got = fake.requests[-1]
        # forwarded as `/{backend}{ep}` is, inside the base path, with no llmbudget header
        assert got["raw_path"] == "/base" + ep
        assert not [h for h in got["headers"] if h.startswith("x-llmbudget")]
        events = proxy.wait_events(before + 1, backend=prefix, session="pr 8")
        assert len(events) == before + 1 and events[-1].agent == "fixer", protocol


def test_explicit_headers_win_over_the_prefix(proxy: RunningProxy) -> None:
    _, ep, body = CASES["openai"]
    r = httpx.post(
        f"{proxy.url}/_llmb/session=from-path/agent=path-agent/openai{ep}",
        json=body,
        headers={"X-LLMBudget-Session": "from-header", "user-agent": "claude-cli/2.1.197 (external, cli)"},
    )
    assert r.status_code == 200
    [event] = proxy.wait_events(1, session="from-header")
    # the header's session; the path's agent, above what the user agent would infer (claude-code)
    assert event.agent == "path-agent"
    assert proxy.events(session="from-path") == []


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_every_ambiguous_form_is_refused_under_the_prefix_too(
    protocol: str, proxy: RunningProxy, fake: FakeUpstream
) -> None:
    prefix, ep, body = CASES[protocol]
    for form in _refused_forms(ep):
        before = len(fake.requests)
        status, answer = send_raw(proxy.url, f"{PRE}/{prefix}{form}", body)
        assert status == 400, (form, answer)
        assert "path" in assert_protocol_error(protocol, answer), form
        assert len(fake.requests) == before, f"{form} reached the upstream"


def test_a_malformed_prefix_is_a_400_and_reaches_nothing(proxy: RunningProxy, fake: FakeUpstream) -> None:
    before = len(fake.requests)
    for protocol, (prefix, ep, body) in CASES.items():
        for bad in ("/_llmb/session=a%2Fb", "/_llmb/session=..", "/_llmb/team=t", "/_llmb"):
            status, answer = send_raw(proxy.url, f"{bad}/{prefix}{ep}", body)
            assert status == 400, (bad, answer)
            assert "_llmb" in assert_protocol_error(protocol, answer) or "path" in str(answer)
    assert len(fake.requests) == before


def test_the_prefix_reaches_nothing_but_a_backend(proxy: RunningProxy, fake: FakeUpstream) -> None:
    before = len(fake.requests)
    for rest in ("/api/events", "/healthz", "/metrics", "/", "/nosuch/v1/chat/completions", "/../api/events"):
        r = httpx.get(f"{proxy.url}/_llmb/session=s{rest}")
        assert r.status_code in (400, 404), (rest, r.text)
        assert "events" not in r.json() and "status" not in r.json(), rest
    r = httpx.get(f"{proxy.url}/_llmb/session=s/nosuch/v1/models")
    assert r.json()["error"]["code"] == "unknown_backend" and "openai" not in r.text  # names no backend
    # and the Host check holds as on any proxied path
    r = httpx.post(f"{proxy.url}{PRE}/openai/v1/chat/completions", json={}, headers={"Host": "evil.example"})
    assert r.status_code == 421
    assert len(fake.requests) == before
