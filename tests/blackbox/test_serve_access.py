"""`llmbudget serve --host 0.0.0.0` as its own process, reached through 127.0.0.1: the admin token guards the
API, dashboard and metrics; the proxy serves virtual keys only; `keys revoke` from another process acts
within a second."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from fakes.process import serve_process
from fakes.upstream import FakeUpstream

ADMIN = "blackbox-admin-token-0123456789"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def test_exposed_serve_end_to_end(
    fake: FakeUpstream, tmp_path: Path, llmbudget: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    config = tmp_path / "llmbudget.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {
                    "openai": {"kind": "openai", "base_url": fake.url, "api_key_env": "BB_OPENAI_KEY"}
                },
                "server": {"admin_token_env": "BB_ADMIN"},
            }
        )
    )
    db = str(tmp_path / "ledger.db")
    env = {"BB_ADMIN": ADMIN, "BB_OPENAI_KEY": "sk-operator-bb"}

    # without the token's variable it refuses to start, in one line
    refused = llmbudget("serve", "--config", str(config), "--db", db, "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode == 1 and "BB_ADMIN" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    created = llmbudget("keys", "create", "bb", "--agent", "blackbox", "--db", db, "--config", str(config))
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()

    with serve_process(config, db, args=("--host", "0.0.0.0"), env=env) as srv:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        for path in ("/api/events", "/metrics", "/api/costs"):
            assert httpx.get(srv.url + path).status_code == 401, path
        r = httpx.post(f"{srv.url}/api/agents/x/pause", json={})
        assert r.status_code == 401
        assert httpx.get(f"{srv.url}/").status_code == 303
        assert httpx.get(f"{srv.url}/api/events", headers=auth).status_code == 200
        # a rebinding page's Host is refused, the proxy included
        evil = {"Host": "rebind.attacker.example"}
        assert httpx.get(f"{srv.url}/api/events", headers={**auth, **evil}).status_code == 421
        assert httpx.post(f"{srv.url}/openai/v1/chat/completions", headers=evil, json={}).status_code == 421

        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        before = len(fake.requests)
        r = httpx.post(f"{srv.url}/openai/v1/chat/completions", json=chat)
        assert r.status_code == 401 and len(fake.requests) == before  # never an open relay

        sdk = openai.OpenAI(base_url=f"{srv.url}/openai/v1", api_key=secret, max_retries=0)
        with sdk:
            assert sdk.chat.completions.create(**chat).choices  # type: ignore[call-overload]
            assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-operator-bb"

            listed = llmbudget("keys", "list", "--json", "--db", db, "--config", str(config))
            assert '"bb"' in listed.stdout and secret not in listed.stdout
            revoked = llmbudget("keys", "revoke", "bb", "--db", db, "--config", str(config))
            assert revoked.returncode == 0, revoked.stderr
            start = time.monotonic()
            while True:
                try:
                    sdk.chat.completions.create(**chat)  # type: ignore[call-overload]
                except openai.AuthenticationError as e:
                    assert "revoked" in str(e)
                    break
                assert time.monotonic() - start < 1.5, "revocation did not reach the server within a second"
                time.sleep(0.05)

        deadline = time.monotonic() + 5
        while True:
            events = httpx.get(f"{srv.url}/api/events?key=bb", headers=auth).json()["events"]
            if events or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert events and events[0]["key"] == "bb" and events[0]["agent"] == "blackbox"
        assert secret not in srv.logs()
