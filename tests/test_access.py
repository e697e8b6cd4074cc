"""Access control: the admin token, the Host allow-list, cross-site refusals and the proxy's relay rule.

The app is the real one (`build_app`); the exposed case is the policy of a server bound to 0.0.0.0
(what `serve --host 0.0.0.0` builds), reached through 127.0.0.1. `tests/blackbox/test_serve_access.py`
does the same with `llmbudget serve` as its own process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream
from starlette.testclient import TestClient

from llmbudget.access.login import LoginLimiter, client_address
from llmbudget.access.policy import COOKIE_NAME, AccessPolicy, check_server_access, host_name
from llmbudget.app import build_app
from llmbudget.config import Config
from llmbudget.errors import ConfigError
from llmbudget.origin import origin_authority
from llmbudget.pricing import PriceBook
from llmbudget.services import Services
from llmbudget.store import open_ledger

TOKEN = "adm-0123456789abcdef"
EXPOSED = AccessPolicy(bind_host="0.0.0.0", token=TOKEN.encode(), token_missing=False, allowed_hosts=())
LOOPBACK = AccessPolicy(bind_host="127.0.0.1", token=None, token_missing=False, allowed_hosts=())


def policy(**kw: Any) -> AccessPolicy:
    base: dict[str, Any] = {
        "bind_host": "127.0.0.1",
        "token": None,
        "token_missing": False,
        "allowed_hosts": (),
    }
    return AccessPolicy(**{**base, **kw})


# ---------------------------------------------------------------- the policy as data


@pytest.mark.parametrize(
    ("bind", "allowed", "host", "ok"),
    [
        ("127.0.0.1", (), "localhost", True),
        ("127.0.0.1", (), "127.0.0.1", True),
        ("127.0.0.1", (), "::1", True),
        ("127.0.0.1", (), "evil.example", False),
        ("127.0.0.1", (), "10.1.2.3", False),  # bound to loopback: another address is not us
        ("0.0.0.0", (), "10.1.2.3", True),  # wildcard bind: an IP literal reaches this server itself
        ("0.0.0.0", (), "rebind.attacker.example", False),
        ("0.0.0.0", ("llm.example.com",), "llm.example.com", True),
        ("0.0.0.0", ("*.example.com",), "a.b.example.com", True),
        ("0.0.0.0", ("*.example.com",), "example.com.evil.org", False),
        ("192.168.1.5", (), "192.168.1.5", True),
        ("192.168.1.5", (), "192.168.1.6", False),
        ("0.0.0.0", ("*",), "anything.example", True),
        ("0.0.0.0", (), "", False),
    ],
)
def test_hosts_the_server_answers_to(bind: str, allowed: tuple[str, ...], host: str, ok: bool) -> None:
    assert policy(bind_host=bind, allowed_hosts=allowed).host_allowed(host) is ok


@pytest.mark.parametrize(
    ("header", "name"),
    [("LocalHost:4141", "localhost"), ("[::1]:4141", "::1"), ("example.com.", "example.com"), ("::1", "::1")],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def testorigin_authority() -> None:
    assert origin_authority("http://127.0.0.1:4141") == "127.0.0.1:4141"
    assert origin_authority("https://llm.example.com:443") == "llm.example.com"
    assert origin_authority("null") == "\x00"


def test_the_cookie_is_not_the_token() -> None:
    value = EXPOSED.cookie_value()
    assert TOKEN not in value and len(value) == 64
    other = policy(token=b"another-token")
    assert other.cookie_value() != value


def test_relay_and_admin_rules() -> None:
    assert LOOPBACK.relay_open and not LOOPBACK.admin_required
    assert not EXPOSED.relay_open and EXPOSED.admin_required
    on_loop_with_token = policy(token=b"t")
    assert on_loop_with_token.admin_required and not on_loop_with_token.relay_open
    assert EXPOSED.is_admin_token(f"Bearer {TOKEN}") and EXPOSED.is_admin_token(TOKEN)
    assert not EXPOSED.is_admin_token("Bearer sk-other")


def test_serve_refuses_to_start_without_a_usable_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="needs an admin token"):
        check_server_access("0.0.0.0", None)
    with pytest.raises(ConfigError, match=r"\$LLMB_ADM"):
        check_server_access("127.0.0.1", "LLMB_ADM")  # named but empty: refused on loopback too
    monkeypatch.setenv("LLMB_ADM", "x" * 32)
    check_server_access("0.0.0.0", "LLMB_ADM")
    check_server_access("127.0.0.1", None)


# ---------------------------------------------------------------- the web side, in process


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    cfg = Config()
    s = Services(cfg, open_ledger(f"sqlite:///{tmp_path / 'l.db'}"), PriceBook.from_config(cfg))
    yield s
    s.close()


def client_for(services: Services, pol: AccessPolicy, host: str = "127.0.0.1:4141") -> TestClient:
    services.access = pol
    return TestClient(build_app(services), base_url=f"http://{host}", follow_redirects=False)


def assert_api_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code
    return dict(err)


def test_exposed_server_needs_the_admin_token_everywhere_but_healthz(services: Services) -> None:
    with client_for(services, EXPOSED) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/api/events")
        assert_api_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_api_error(c.get("/api/events", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_api_error(c.get("/metrics"), 401, "unauthorized")
        assert_api_error(c.post("/api/agents/x/pause", json={}), 401, "unauthorized")
        ok = c.get("/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "events" in ok.json()
        # the dashboard sends a browser to the login form
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"


def test_login_form_sets_a_strict_http_only_cookie(services: Services) -> None:
    with client_for(services, EXPOSED) as c:
        form = c.get("/login?next=/api/events")
        assert form.status_code == 200 and 'name="token"' in form.text and "/api/events" in form.text
        bad = c.post("/login", data={"token": "nope"})
        assert bad.status_code == 401 and "Wrong token" in bad.text
        assert COOKIE_NAME not in c.cookies
        cross = c.post("/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"})
        assert_api_error(cross, 403, "cross_site")
        r = c.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
        assert r.status_code == 303 and r.headers["location"] == "/"  # never off to another site
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie
        assert c.get("/api/events").status_code == 200  # the cookie alone is enough
        again = c.get("/login?next=/api/costs")  # already logged in: straight on
        assert again.status_code == 303 and again.headers["location"] == "/api/costs"
        c.cookies.clear()
        c.cookies.set(COOKIE_NAME, TOKEN)  # the raw token is not a valid cookie
        assert_api_error(c.get("/api/events"), 401, "unauthorized")


def test_a_configured_token_holds_on_loopback_too(services: Services) -> None:
    with client_for(services, policy(token=TOKEN.encode())) as c:
        assert_api_error(c.get("/api/costs"), 401, "unauthorized")
        assert c.get("/api/costs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_token_variable_left_empty_fails_closed(services: Services) -> None:
    with client_for(services, policy(token_missing=True)) as c:
        err = assert_api_error(c.get("/api/costs"), 503, "unavailable")
        assert "admin_token_env" in err["message"]


def test_state_changes_need_json_and_the_same_origin(services: Services) -> None:
    with client_for(services, LOOPBACK) as c:
        # what an HTML form or a no-cors fetch from any web page can send
        r = c.post("/api/agents/a/pause", content=b'{"reason": "x"}', headers={"Content-Type": "text/plain"})
        assert "text/plain" in assert_api_error(r, 415, "unsupported_media_type")["message"]
        r = c.post("/api/agents/a/pause", data={"reason": "x"})
        assert_api_error(r, 415, "unsupported_media_type")
        assert_api_error(c.post("/api/agents/a/resume"), 415, "unsupported_media_type")
        for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
            r = c.post("/api/agents/a/pause", json={}, headers={"Origin": origin})
            assert_api_error(r, 403, "cross_site")
        r = c.post("/api/agents/a/pause", json={}, headers={"Sec-Fetch-Site": "cross-site"})
        assert_api_error(r, 403, "cross_site")
        assert c.get("/api/budgets").json()["paused_agents"] == []  # nothing got through
        r = c.post("/api/agents/a/pause", json={}, headers={"Origin": "http://127.0.0.1:4141"})
        assert r.status_code == 200 and r.json()["paused"] is True
        r = c.post("/api/agents/a/resume", json={})  # no Origin (curl, scripts): fine
        assert r.status_code == 200 and r.json()["paused"] is False


def test_unknown_hosts_are_refused_before_anything_else(services: Services) -> None:
    with client_for(services, LOOPBACK, host="rebind.attacker.example:4141") as c:
        err = assert_api_error(c.get("/api/events"), 421, "misdirected_request")
        assert "rebind.attacker.example" in err["message"] and "allowed_hosts" in err["message"]
        assert_api_error(c.post("/api/agents/a/pause", json={}), 421, "misdirected_request")
        r = c.post("/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
        assert r.status_code == 421 and r.json()["error"]["code"] == "misdirected_request"  # OpenAI shape
        r = c.post("/anthropic/v1/messages", json={"model": "m", "messages": [], "max_tokens": 1})
        assert r.status_code == 421 and r.json()["type"] == "error"  # Anthropic shape
        assert c.get("/healthz").status_code == 200
    ok = policy(allowed_hosts=("llm.example.com",))
    with client_for(services, ok, host="llm.example.com") as c:
        assert c.get("/api/events").status_code == 200


# ---------------------------------------------------------------- the proxy, on a real uvicorn


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def proxy_config(fake_url: str) -> Config:
    return Config.model_validate(
        {
            "backends": {
                "openai": {
                    "kind": "openai",
                    "base_url": fake_url,
                    "provider": "openai",
                    "api_key_env": "LLMB_K",
                },
                "anthropic": {
                    "kind": "anthropic",
                    "base_url": fake_url,
                    "provider": "anthropic",
                    "api_key_env": "LLMB_K",
                },
            }
        }
    )


@pytest.fixture
def exposed(fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningProxy]:
    monkeypatch.setenv("LLMB_K", "sk-operator")
    with running_proxy(proxy_config(fake.url), tmp_path / "l.db", parts={"access": EXPOSED}) as p:
        yield p


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_no_relay_of_the_operators_key_off_loopback(exposed: RunningProxy, fake: FakeUpstream) -> None:
    before = len(fake.requests)
    r = httpx.post(f"{exposed.url}/openai/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "virtual key" in r.json()["error"]["message"]
    r = httpx.post(f"{exposed.url}/openai/v1/models")  # unmetered paths too
    assert r.status_code == 401
    r = httpx.post(
        f"{exposed.url}/anthropic/v1/messages",
        json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": TOKEN},
    )
    assert r.status_code == 401 and r.json()["type"] == "error"  # Anthropic's shape
    # the admin token is never forwarded as a provider key
    r = httpx.post(
        f"{exposed.url}/openai/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 401 and "admin token" in r.json()["error"]["message"]
    assert len(fake.requests) == before
    # a caller's own provider key goes through unchanged (it pays with its own key)
    r = httpx.post(
        f"{exposed.url}/openai/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-mine"}
    )
    assert r.status_code == 200
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-mine"


def test_metered_calls_need_a_json_body(fake: FakeUpstream, tmp_path: Path) -> None:
    import json

    with running_proxy(proxy_config(fake.url), tmp_path / "l.db", parts={"access": LOOPBACK}) as p:
        before = len(fake.requests)
        body = json.dumps(CHAT).encode()
        for ctype in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            None,
        ):
            headers = {"Content-Type": ctype} if ctype else {}
            r = httpx.post(f"{p.url}/openai/v1/chat/completions", content=body, headers=headers)
            assert r.status_code == 415, ctype
            assert r.json()["error"]["code"] == "unsupported_media_type"
        r = httpx.post(
            f"{p.url}/anthropic/v1/messages",
            content=b'{"model": "m", "max_tokens": 1, "messages": []}',
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 415 and r.json()["type"] == "error"
        assert len(fake.requests) == before
        # on plain loopback a key-less SDK call still gets the backend's key, as before
        sdk = openai.OpenAI(base_url=f"{p.url}/openai/v1", api_key="sk-client", max_retries=0)
        with sdk:
            assert sdk.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
        r = httpx.post(f"{p.url}/openai/v1/chat/completions", json=CHAT)
        assert r.status_code == 200


def test_a_page_from_another_site_never_gets_the_operators_key(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Provider APIs answer CORS preflights, so a page could fetch() JSON through a loopback proxy."""
    monkeypatch.setenv("LLMB_K", "sk-operator")
    with running_proxy(proxy_config(fake.url), tmp_path / "l.db", parts={"access": LOOPBACK}) as p:
        before = len(fake.requests)
        evil = {"Origin": "http://evil.example"}
        preflight = {**evil, "Access-Control-Request-Method": "POST"}
        r = httpx.options(f"{p.url}/openai/v1/chat/completions", headers=preflight)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
        r = httpx.post(f"{p.url}/openai/v1/chat/completions", json=CHAT, headers=evil)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
        r = httpx.post(
            f"{p.url}/anthropic/v1/messages",
            json={"model": "m", "max_tokens": 1, "messages": []},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert r.status_code == 403 and r.json()["type"] == "error"
        assert len(fake.requests) == before
        # the server's own pages, scripts without an Origin, and a caller paying with its own key pass
        own = {"Origin": p.url}
        assert httpx.post(f"{p.url}/openai/v1/chat/completions", json=CHAT, headers=own).status_code == 200
        assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-operator"
        r = httpx.post(
            f"{p.url}/openai/v1/chat/completions",
            json=CHAT,
            headers={**evil, "Authorization": "Bearer sk-callers-own"},
        )
        assert r.status_code == 200
        assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-callers-own"


def test_websocket_upgrades_are_guarded_too(services: Services) -> None:
    from starlette.websockets import WebSocketDisconnect

    with client_for(services, EXPOSED) as c:
        for path, headers in [
            ("/api/live", {}),  # no token
            ("/login", {"Authorization": f"Bearer {TOKEN}"}),
            ("/api/live", {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}),
        ]:
            with pytest.raises(WebSocketDisconnect) as e, c.websocket_connect(path, headers=headers):
                pass
            assert e.value.code == 1008, path  # refused by the guard, not by a missing route
    with client_for(services, LOOPBACK, host="rebind.attacker.example") as c:
        with pytest.raises(WebSocketDisconnect) as e, c.websocket_connect("/openai/v1/realtime"):
            pass
        assert e.value.code == 1008


def test_serve_warns_about_a_short_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from llmbudget.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("server: {admin_token_env: LLMB_SHORT}\n")
    monkeypatch.setenv("LLMB_SHORT", "admin")
    with socket.socket() as busy:  # the start stops at the busy port, after the checks
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert main(["serve", "--config", str(config), "--port", port, "--db", str(tmp_path / "l.db")]) == 1
    err = capsys.readouterr().err
    assert "$LLMB_SHORT is shorter than 24 characters" in err and "cannot listen" in err


def test_login_limiter_window_and_addresses() -> None:
    now = [1000.0]
    limiter = LoginLimiter(attempts=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.attempt("10.0.0.1")
        now[0] += 10
    assert limiter.retry_after("10.0.0.1") == pytest.approx(30)  # the first failure leaves at 1060
    assert limiter.retry_after("10.0.0.2") == 0  # another address is not held back
    at = limiter.attempt("10.0.0.2")
    limiter.succeeded("10.0.0.2", at)  # a right token takes its attempt back
    assert limiter._failed["10.0.0.2"] == deque()
    now[0] = 1060.5
    assert limiter.retry_after("10.0.0.1") == 0  # one failure left the window
    limiter.attempt("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(9.5)
    now[0] = 2000
    assert limiter.retry_after("10.0.0.1") == 0 and "10.0.0.1" not in limiter._failed


@pytest.mark.parametrize(
    ("client", "key"),
    [
        (("203.0.113.7", 5000), "203.0.113.7"),
        (("2001:db8:1:2:aaaa::1", 5000), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::9", 5001), "2001:db8:1:2::/64"),  # one /64 is one client
        (None, ""),
    ],
)
def test_client_address(client: tuple[str, int] | None, key: str) -> None:
    assert client_address({"client": client}) == key


def test_the_attribution_prefix_is_a_proxied_path_off_loopback_too(
    exposed: RunningProxy, fake: FakeUpstream
) -> None:
    url = f"{exposed.url}/_llmb/session=s-exposed/agent=a/openai/v1/chat/completions"
    # the proxy's own rules, not the admin token's: no key is a 401 in the protocol's shape
    r = httpx.post(url, json=CHAT)
    assert r.status_code == 401 and "virtual key" in r.json()["error"]["message"]
    r = httpx.post(url, json=CHAT, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 401 and "admin token" in r.json()["error"]["message"]
    # nor does the prefix open the API or the dashboard without the token
    for rest in ("/api/events", "/", "/login"):
        r = httpx.get(f"{exposed.url}/_llmb/session=s-exposed{rest}", follow_redirects=False)
        assert r.status_code in (400, 404), rest
    r = httpx.post(url, json=CHAT, headers={"Authorization": "Bearer sk-mine"})
    assert r.status_code == 200
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-mine"
    [event] = exposed.wait_events(1, session="s-exposed")
    assert event.agent == "a"
