"""`llmbudget serve` as its own process at its edges: headers too large for any route, the login
form's rate limit, virtual keys' names (an unknown one, a revoked one used again), and how long an
idle connection stays open."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml
from conftest import Server
from fakes import upstream as fx
from fakes.upstream import FakeUpstream

ADMIN = "edges-admin-token-0123456789abcdef"
CHAT = {"model": fx.OPENAI_CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
#: protocol -> (path, body)
PROXIED: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("/openai/v1/chat/completions", CHAT),
    "anthropic": (
        "/anthropic/v1/messages",
        {"model": fx.ANTHROPIC_MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "gemini": (
        f"/gemini/v1beta/models/{fx.GEMINI_MODEL}:generateContent",
        {"contents": [{"parts": [{"text": "hi"}]}]},
    ),
}


def guarded_config(tmp_path: Path, fake: FakeUpstream) -> Path:
    """Backends on the fake upstream with a provider key of the operator's, and an admin token."""
    config = tmp_path / "llmbudget.yaml"
    backends = {
        name: {"kind": name, "base_url": fake.url, "api_key_env": "EDGES_PROVIDER_KEY"}
        for name in ("openai", "anthropic", "gemini")
    }
    config.write_text(yaml.safe_dump({"backends": backends, "server": {"admin_token_env": "EDGES_ADMIN"}}))
    return config


ENV = {"EDGES_ADMIN": ADMIN, "EDGES_PROVIDER_KEY": "sk-operator-edges"}
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def test_headers_over_64_kib_are_a_431_on_every_route(
    serve: Callable[..., Server], fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    srv = serve(guarded_config(tmp_path, fake_upstream), env=ENV)
    one_big = {"x-padding": "a" * 100_000}
    many_small = {f"x-pad-{i}": "b" * 40 for i in range(2_000)}  # 100 KB in 2,000 headers
    with httpx.Client(timeout=30) as c:
        for headers in (one_big, many_small):
            before = len(fake_upstream.requests)
            for protocol, (path, body) in PROXIED.items():
                r = c.post(srv.url + path, json=body, headers={**AUTH, **headers})
                assert r.status_code == 431, (protocol, r.status_code, r.text[:200])
                answer = r.json()
                if protocol == "anthropic":
                    assert answer["type"] == "error" and "64 KiB" in answer["error"]["message"]
                elif protocol == "gemini":
                    assert answer["error"]["code"] == 431 and answer["error"]["status"] == "INVALID_ARGUMENT"
                else:
                    assert answer["error"]["code"] == "request_header_fields_too_large"
            assert len(fake_upstream.requests) == before, "a 431 reached the upstream"
            for path in ("/api/events", "/healthz", "/", "/login"):
                r = c.get(srv.url + path, headers={**AUTH, **headers})
                assert r.status_code == 431, path
                if path != "/":
                    assert r.json()["error"] == {
                        "code": "request_header_fields_too_large",
                        "message": "the request's headers total more than 64 KiB",
                        "status": 431,
                    }
        # just under the bound is served as usual, and the server goes on serving
        near = {"x-padding": "a" * 60_000}
        assert c.get(srv.url + "/healthz", headers=near).status_code == 200
        assert c.get(srv.url + "/api/events", headers={**AUTH, **near}).status_code == 200
        assert srv.openai().chat.completions.create(**CHAT).choices  # its own provider key passes through
    assert fake_upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-test"


def _login(url: str, token: str) -> httpx.Response:
    return httpx.post(url + "/login", data={"token": token, "next": "/"}, timeout=30)


def test_failed_logins_are_limited_per_address(
    serve: Callable[..., Server], fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    srv = serve(guarded_config(tmp_path, fake_upstream), env=ENV)
    # a burst of concurrent guesses: ten are answered, the rest wait, whatever their timing
    with ThreadPoolExecutor(15) as pool:
        statuses = sorted(r.status_code for r in pool.map(lambda i: _login(srv.url, f"guess-{i}"), range(15)))
    assert statuses == [401] * 10 + [429] * 5
    r = _login(srv.url, ADMIN)  # even the right token, until the window has passed
    assert r.status_code == 429
    assert 50 <= int(r.headers["retry-after"]) <= 60
    assert "Too many failed logins" in r.text and 'name="token"' in r.text
    # the bearer token is not the login form: it keeps working
    assert httpx.get(srv.url + "/api/events", headers=AUTH).status_code == 200


def test_the_right_token_does_not_count_against_the_limit(
    serve: Callable[..., Server], fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    srv = serve(guarded_config(tmp_path, fake_upstream), env=ENV)
    for _ in range(12):
        r = _login(srv.url, ADMIN)
        assert r.status_code == 303 and "llmbudget_admin=" in r.headers["set-cookie"]
    for i in range(9):
        assert _login(srv.url, f"typo-{i}").status_code == 401
    assert _login(srv.url, ADMIN).status_code == 303  # nine failures: still under the limit


def test_unknown_and_reused_key_names(
    serve: Callable[..., Server],
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    llmbudget: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    config = guarded_config(tmp_path, fake_upstream)
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    where = ("--db", db, "--config", str(config))

    def create(name: str) -> subprocess.CompletedProcess[str]:
        return llmbudget("keys", "create", name, "--agent", "edges", *where)

    first = create("bot")
    assert first.returncode == 0, first.stderr
    old_secret = first.stdout.strip()
    taken = create("bot")  # an active key's name: one line saying what to do
    assert taken.returncode == 1 and "Traceback" not in taken.stderr
    assert len(taken.stderr.strip().splitlines()) == 1
    assert "exists and is active; revoke it first or pick another name" in taken.stderr
    assert llmbudget("keys", "revoke", "bot", *where).returncode == 0
    again = create("bot")  # a revoked key's name: a new secret replaces it
    assert again.returncode == 0, again.stderr
    new_secret = again.stdout.strip()
    assert new_secret.startswith("llmb-") and new_secret != old_secret
    listed = llmbudget("keys", "list", "--json", *where)
    assert [(k["name"], k["state"]) for k in json.loads(listed.stdout)["keys"]] == [("bot", "active")]
    ghost = llmbudget("keys", "revoke", "ghost", *where)
    assert ghost.returncode == 1 and "no key named 'ghost'; keys: bot" in ghost.stderr
    assert "Traceback" not in ghost.stderr

    srv = serve(config, db, env=ENV)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/api/keys/ghost/revoke", json={}, headers=AUTH)
        assert r.status_code == 404
        assert r.json() == {
            "error": {"code": "not_found", "message": "no key named 'ghost'; keys: bot", "status": 404}
        }
        path, body = PROXIED["openai"]
        r = c.post(path, json=body, headers={"Authorization": f"Bearer {new_secret}"})
        assert r.status_code == 200, r.text
        assert fake_upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-operator-edges"
        r = c.post(path, json=body, headers={"Authorization": f"Bearer {old_secret}"})
        assert r.status_code == 401, "the replaced key's old secret still spends"
    assert old_secret not in srv.logs() and new_secret not in srv.logs()


def test_an_idle_connection_outlives_the_clients_pool_timeout(
    serve: Callable[..., Server], fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A client's pool drops an idle connection after 5 s (httpx) to 60 s (a load balancer): the
    server keeps it longer, so a request never meets a connection the server is closing."""
    import http.client
    import time
    from urllib.parse import urlsplit

    srv = serve(guarded_config(tmp_path, fake_upstream), env=ENV)
    where = urlsplit(srv.url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        sock = conn.sock
        time.sleep(6.5)  # past uvicorn's default keep-alive of 5 s
        conn.request("GET", "/healthz")  # a connection the server closed: RemoteDisconnected
        again = conn.getresponse()
        assert again.status == 200 and again.read()
        assert conn.sock is sock, "the second request did not go on the same connection"
    finally:
        conn.close()
