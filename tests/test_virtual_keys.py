"""Virtual keys: created once, stored hashed, swapped for the backend's key, attribution fixed, revoked within a second.

The proxy runs as an exposed server (bound off loopback, admin token set) on a real uvicorn reached
through 127.0.0.1, with the official SDKs as clients and fake providers upstream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from fakes import upstream as fx
from fakes.servers import RunningProxy, running_proxy
from fakes.upstream import FakeUpstream

from llmbudget.access.policy import AccessPolicy
from llmbudget.cli import main
from llmbudget.config import Config
from llmbudget.errors import NotFound, ValidationError
from llmbudget.events import UsageEvent
from llmbudget.keys import PREFIX, KeyRing, hash_secret, make_key, parse_expires
from llmbudget.store import open_ledger
from llmbudget.store.keys import KeyStore

EXPOSED = AccessPolicy(bind_host="0.0.0.0", token=b"admin-token-1234", token_missing=False, allowed_hosts=())


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def config(fake_url: str, extra: str = "") -> Config:
    from llmbudget.config import parse_config

    text = (
        "backends:\n"
        f"  openai: {{kind: openai, base_url: {fake_url}, provider: openai, api_key_env: LLMB_OAI}}\n"
        f"  anthropic: {{kind: anthropic, base_url: {fake_url}, provider: anthropic, api_key_env: LLMB_ANT}}\n"
        f"  gemini: {{kind: gemini, base_url: {fake_url}, provider: google, api_key_env: LLMB_GEM}}\n" + extra
    )
    return parse_config(text)[0]


@pytest.fixture
def served(fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningProxy]:
    monkeypatch.setenv("LLMB_OAI", "sk-operator-openai")
    monkeypatch.setenv("LLMB_ANT", "sk-ant-operator")
    monkeypatch.setenv("LLMB_GEM", "AIza-operator")
    with running_proxy(config(fake.url), tmp_path / "l.db", parts={"access": EXPOSED}) as p:
        yield p


def create(p: RunningProxy, name: str, **kw: object) -> str:
    key, secret = make_key(name, **kw)  # type: ignore[arg-type]
    KeyStore(p.services.ledger).add(key)
    return secret


def test_a_key_is_swapped_for_the_backends_key_and_fixes_attribution(
    served: RunningProxy, fake: FakeUpstream
) -> None:
    secret = create(served, "ci-bot", agent="ci", team="platform")
    sdk = openai.OpenAI(
        base_url=f"{served.url}/openai/v1",
        api_key=secret,
        max_retries=0,
        default_headers={"X-LLMBudget-Agent": "spoofed", "X-LLMBudget-Session": "s-1"},
    )
    with sdk:
        out = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert out.choices
    seen = fake.requests[-1]["headers"]
    assert seen["authorization"] == "Bearer sk-operator-openai"
    assert secret not in json.dumps(fake.requests[-1]["headers"])
    (event,) = served.wait_events(1)
    assert (event.key, event.agent, event.team, event.session) == ("ci-bot", "ci", "platform", "s-1")
    # the secret is stored nowhere: not in the database, not in the audit log
    served.services.ledger.flush()
    for path in Path(served.services.ledger.url.removeprefix("sqlite:///")).parent.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_anthropic_and_gemini_carry_keys_their_own_way(served: RunningProxy, fake: FakeUpstream) -> None:
    secret = create(served, "team-a", team="a")
    client = anthropic.Anthropic(base_url=f"{served.url}/anthropic", api_key=secret, max_retries=0)
    with client:
        msg = client.messages.create(
            model=fx.ANTHROPIC_MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert msg.content
    assert fake.requests[-1]["headers"]["x-api-key"] == "sk-ant-operator"
    url = f"{served.url}/gemini/v1beta/models/{fx.GEMINI_MODEL}:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    r = httpx.post(url, json=body, headers={"x-goog-api-key": secret})
    assert r.status_code == 200
    assert fake.requests[-1]["headers"]["x-goog-api-key"] == "AIza-operator"
    r = httpx.post(url + f"?key={secret}&alt=json", json=body)
    assert r.status_code == 200
    last = fake.requests[-1]
    assert last["query"] == "alt=json" and last["headers"]["x-goog-api-key"] == "AIza-operator"
    events = served.wait_events(3, key="team-a")
    assert len(events) == 3 and {e.team for e in events} == {"a"}


def test_backends_expiry_revocation_and_unknown_keys(served: RunningProxy, fake: FakeUpstream) -> None:
    only_anthropic = create(served, "narrow", backends=("anthropic",))
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    url = f"{served.url}/openai/v1/chat/completions"
    before = len(fake.requests)
    r = httpx.post(url, json=chat, headers={"Authorization": f"Bearer {only_anthropic}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "backend_not_allowed"
    r = httpx.post(url, json=chat, headers={"Authorization": f"Bearer {PREFIX}not-a-key-at-all"})
    assert r.status_code == 401 and "unknown" in r.json()["error"]["message"]
    store = KeyStore(served.services.ledger)
    old, old_secret = make_key("old")
    store.add(old.__class__(**{**_fields(old), "expires_us": int((time.time() - 5) * 1e6)}))
    r = httpx.post(url, json=chat, headers={"Authorization": f"Bearer {old_secret}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    assert len(fake.requests) == before

    live = create(served, "live")
    ok = httpx.post(url, json=chat, headers={"Authorization": f"Bearer {live}"})
    assert ok.status_code == 200  # now cached by the proxy
    store.revoke("live")
    revoked_at = time.monotonic()
    while True:
        r = httpx.post(url, json=chat, headers={"Authorization": f"Bearer {live}"})
        if r.status_code == 401:
            break
        assert time.monotonic() - revoked_at < 1.2, "revocation took more than a second"
        time.sleep(0.05)
    assert "revoked" in r.json()["error"]["message"]


def _fields(key: object) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(key)  # type: ignore[call-overload]


def test_a_key_scoped_budget_refuses_past_its_limit(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMB_ANT", "sk-ant-operator")
    extra = (
        "budgets:\n  timezone: UTC\n  limits:\n"
        "    - {name: per-key, scope: key, match: spender, limit_usd: 0.000001, period: day}\n"
    )
    with running_proxy(config(fake.url, extra), tmp_path / "l.db", parts={"access": EXPOSED}) as p:
        spender, other = create(p, "spender"), create(p, "other")
        body = {"model": fx.ANTHROPIC_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        url = f"{p.url}/anthropic/v1/messages"
        r = httpx.post(url, json=body, headers={"x-api-key": spender})
        assert r.status_code == 429 and "per-key" in r.json()["error"]["message"]
        assert httpx.post(url, json=body, headers={"x-api-key": other}).status_code == 200
        blocked = p.wait_events(1, key="spender")
        assert [e.status for e in blocked] == ["blocked"]


def test_key_store_on_postgresql_and_sqlite(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_ledger(ledger_url) as ledger:
        store = KeyStore(ledger)
        key, secret = make_key("pg-key", user="ana", backends=("openai", "gemini"))
        store.add(key)
        found = store.by_hash(hash_secret(secret))
        assert found is not None and found.user == "ana" and found.backends == ("openai", "gemini")
        assert found.state() == "active" and found.fixed() == {"user": "ana"}
        with pytest.raises(ValidationError, match="active"):
            store.add(make_key("pg-key")[0])
        assert store.revoke("pg-key")[1] is True and store.revoke("pg-key")[1] is False
        again, _ = make_key("pg-key")
        store.add(again)  # a revoked name can be used again
        assert [k.state() for k in store.list()] == ["active"]
        with pytest.raises(NotFound, match="no key named 'nope'"):
            store.revoke("nope")
        # events carry the key's name, stored and filtered in both back-ends
        ledger.record_many([UsageEvent(backend="openai", model="m", key="pg-key"), UsageEvent("openai", "m")])
        assert [e.key for e in ledger.query(filters={"key": "pg-key"})] == ["pg-key"]
        rows = ledger.costs(since=None, until=None, by="backend", filters={"key": "pg-key"})
        assert [r.calls for r in rows] == [1]
    if ledger_url.startswith("sqlite"):
        assert main(["events", "--key", "pg-key", "--json", "--db", ledger_url]) == 0
        assert [e["key"] for e in json.loads(capsys.readouterr().out)["events"]] == ["pg-key"]
        assert main(["costs", "--key", "pg-key", "--since", "2000-01-01", "--json", "--db", ledger_url]) == 0
        assert sum(r["calls"] for r in json.loads(capsys.readouterr().out)["rows"]) == 1


def test_the_ring_caches_for_at_most_its_ttl(tmp_path: Path) -> None:
    asyncio.run(_ring_caches(tmp_path))


async def _ring_caches(tmp_path: Path) -> None:
    with open_ledger(f"sqlite:///{tmp_path / 'r.db'}") as ledger:
        store = KeyStore(ledger)
        key, secret = make_key("k")
        store.add(key)
        ring = KeyRing(store, ttl_s=0.2)
        first = await ring.resolve(secret)
        assert first is not None and first.state() == "active"
        store.revoke("k")
        cached = await ring.resolve(secret)
        assert cached is not None and cached.state() == "active"  # still within the TTL
        time.sleep(0.25)
        fresh = await ring.resolve(secret)
        assert fresh is not None and fresh.state() == "revoked"
        assert await ring.resolve(PREFIX + "unknown") is None


def test_expires_and_names() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expires("30d", now) == now + timedelta(days=30)
    assert parse_expires("12h", now) == now + timedelta(hours=12)
    assert parse_expires("2027-01-31", now) == datetime(2027, 1, 31, tzinfo=UTC)
    for bad in ("soon", "0d", "2020-01-01", "-3d"):
        with pytest.raises(ValidationError) as e:
            parse_expires(bad, now)
        assert e.value.field == "--expires"
    with pytest.raises(ValidationError, match="not a key name"):
        make_key("has space")


def test_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "k.db")
    assert main(["keys", "create", "ci", "--agent", "ci", "--backends", "openai,local", "--db", db]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith(PREFIX) and len(secret) > 40 and "only time" in out.err
    assert main(["keys", "create", "x", "--backends", "nope", "--db", db]) == 1
    assert "--backends: unknown backend 'nope'" in capsys.readouterr().err
    assert main(["keys", "create", "x", "--expires", "whenever", "--db", db]) == 1
    assert "--expires" in capsys.readouterr().err
    assert main(["keys", "list", "--json", "--db", db]) == 0
    listed = capsys.readouterr().out
    (row,) = json.loads(listed)["keys"]
    assert row["name"] == "ci" and row["state"] == "active" and row["backends"] == ["openai", "local"]
    assert secret not in listed and secret[: len(PREFIX) + 4] == row["hint"][: len(PREFIX) + 4]
    assert main(["keys", "list", "--csv", "--db", db]) == 0
    csv_out = capsys.readouterr().out
    assert csv_out.splitlines()[0].startswith("name,state,hint") and secret not in csv_out
    assert main(["keys", "list", "--db", db]) == 0
    assert "ci" in capsys.readouterr().out
    assert main(["keys", "revoke", "ci", "--db", db]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "ghost", "--db", db]) == 1
    assert "no key named 'ghost'" in capsys.readouterr().err


def test_keys_over_the_api(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from llmbudget.app import build_app
    from llmbudget.pricing import PriceBook
    from llmbudget.services import Services

    cfg = config("http://127.0.0.1:9")
    services = Services(cfg, open_ledger(f"sqlite:///{tmp_path / 'api.db'}"), PriceBook.from_config(cfg))
    services.access = EXPOSED
    auth = {"Authorization": "Bearer admin-token-1234"}
    try:
        with TestClient(build_app(services), base_url="http://127.0.0.1:4141") as c:
            assert c.post("/api/keys", json={"name": "k"}).status_code == 401
            r = c.post("/api/keys", json={"name": "k", "agent": "a", "backends": ["openai"]}, headers=auth)
            assert r.status_code == 200, r.text
            secret = r.json()["key"]
            assert secret.startswith(PREFIX)
            listed = c.get("/api/keys", headers=auth)
            assert secret not in listed.text and listed.json()["keys"][0]["agent"] == "a"
            for body, field in [
                ({"name": "k"}, "name"),  # active already
                ({"name": "bad name"}, "name"),
                ({"name": "x", "backends": ["nope"]}, "backends"),
                ({"name": "x", "expires": "someday"}, "expires"),
                ({"name": "x", "colour": "red"}, "colour"),
                ({}, "name"),
                ([], "body"),
            ]:
                r = c.post("/api/keys", json=body, headers=auth)
                assert r.status_code == 400 and r.json()["error"]["field"] == field, (body, r.text)
            r = c.post("/api/keys", content=b'{"name": "x"}', headers={**auth, "Content-Type": "text/plain"})
            assert r.status_code == 415
            r = c.post("/api/keys/k/revoke", json={}, headers=auth)
            assert r.json()["state"] == "revoked" and r.json()["changed"] is True
            r = c.post("/api/keys/ghost/revoke", json={}, headers=auth)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found" and r.json()["error"]["status"] == 404
            assert "no key named 'ghost'; keys: k" in r.json()["error"]["message"]
    finally:
        services.close()


def test_a_key_cannot_spend_the_operators_key_on_unmetered_endpoints(
    served: RunningProxy, fake: FakeUpstream
) -> None:
    """Images, speech, batches and fine-tuning are billed but never metered: a key's budget would not hold."""
    secret = create(served, "narrow-spend")
    auth = {"Authorization": f"Bearer {secret}", "x-api-key": secret}
    for path in (
        "/openai/v1/images/generations",
        "/openai/v1/audio/speech",
        "/openai/v1/batches",
        "/openai/v1/fine_tuning/jobs",
        "/anthropic/v1/messages/batches",
        f"/gemini/v1beta/models/{fx.GEMINI_MODEL}:batchGenerateContent",
    ):
        before = len(fake.requests)
        r = httpx.post(served.url + path, json={"model": "m", "prompt": "x"}, headers=auth)
        assert r.status_code == 403, (path, r.text)
        assert "not metered" in r.text
        assert len(fake.requests) == before, f"{path} reached the upstream with the operator's key"
    # reads and free token counting still go through with the backend's key
    r = httpx.get(served.url + "/openai/v1/models", headers=auth)
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-operator-openai"
    r = httpx.post(
        served.url + "/anthropic/v1/messages/count_tokens",
        json={"model": fx.ANTHROPIC_MODEL, "messages": []},
        headers={"x-api-key": secret},
    )
    assert fake.requests[-1]["path"].endswith("/count_tokens")
    assert fake.requests[-1]["headers"]["x-api-key"] == "sk-ant-operator"
    # a caller's own provider key is theirs to spend
    r = httpx.post(
        served.url + "/openai/v1/images/generations",
        json={"prompt": "x"},
        headers={"Authorization": "Bearer sk-callers-own"},
    )
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-callers-own"


def test_a_keys_fixed_attribution_wins_over_the_path_prefix(served: RunningProxy, fake: FakeUpstream) -> None:
    secret = create(served, "prefixed", agent="ci")
    base = f"{served.url}/_llmb/session=s-pre/agent=spoofed/openai/v1"
    with openai.OpenAI(base_url=base, api_key=secret, max_retries=0) as sdk:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-operator-openai"
    (event,) = served.wait_events(1)
    # the key fixes the agent; the session it leaves open comes from the path
    assert (event.key, event.agent, event.session) == ("prefixed", "ci", "s-pre")
