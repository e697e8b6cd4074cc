"""No log line of `llmbudget serve` holds a key: planted in `?key=`, `Authorization`, `x-api-key`,
`x-goog-api-key` and WebSocket upgrade URLs, at info and at debug level, stdout and stderr."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client
import yaml
from fakes import upstream as fx
from fakes.process import serve_process
from fakes.servers import free_port
from fakes.upstream import FakeUpstream

#: every planted secret; none may appear in any log line
KEYS = {
    "query": "AIzaPLANTEDquery0000000000000000000001",
    "query_unmetered": "AIzaPLANTEDquery0000000000000000000002",
    "bearer": "sk-PLANTEDbearer000000000000000000000003",
    "x_api_key": "sk-ant-PLANTEDxapikey0000000000000000004",
    "goog": "AIzaPLANTEDgoog00000000000000000000005",
    "ws_query": "AIzaPLANTEDwsquery000000000000000000006",
    "ws_bearer": "sk-PLANTEDwsbearer00000000000000000007",
    "ws_api": "AIzaPLANTEDwsapi00000000000000000000008",
    "dead": "AIzaPLANTEDdead00000000000000000000009",
    "bad_path": "AIzaPLANTEDbadpath000000000000000000010",
    "ws_relay": "sk-PLANTEDwsrelay0000000000000000000011",
    "ws_relay_query": "sk-PLANTEDwsrelayquery000000000000000011",
    "ws_relay_bearer": "sk-PLANTEDwsrelaybearer00000000000000012",
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def write_config(tmp: Path, fake_url: str) -> Path:
    config = {
        "backends": {
            "openai": {"kind": "openai", "base_url": fake_url},
            "anthropic": {"kind": "anthropic", "base_url": fake_url},
            "gemini": {"kind": "gemini", "base_url": fake_url},
            "dead": {"kind": "gemini", "base_url": f"http://127.0.0.1:{free_port()}"},
        }
    }
    path = tmp / "llmbudget.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def drive(url: str) -> list[str]:
    """Send every kind of request that carries a key; returns what each WebSocket attempt got."""
    gem = f"/gemini/v1beta/models/{fx.GEMINI_MODEL}:generateContent"
    text = {"contents": [{"parts": [{"text": "hi"}]}]}
    chat = {"model": fx.OPENAI_CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.post(f"{gem}?key={KEYS['query']}", json=text).status_code == 200
        assert c.get(f"/gemini/v1beta/models?key={KEYS['query_unmetered']}").status_code == 404
        assert (
            c.post(
                "/openai/v1/chat/completions",
                json=chat,
                headers={"Authorization": f"Bearer {KEYS['bearer']}"},
            ).status_code
            == 200
        )
        assert (
            c.post(
                "/anthropic/v1/messages",
                json={
                    "model": fx.ANTHROPIC_MODEL,
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"x-api-key": KEYS["x_api_key"]},
            ).status_code
            == 200
        )
        assert c.post(gem, json=text, headers={"x-goog-api-key": KEYS["goog"]}).status_code == 200
        dead = f"/dead/v1beta/models/{fx.GEMINI_MODEL}:generateContent?key={KEYS['dead']}"
        assert c.post(dead, json=text).status_code == 502
        bad = f"/gemini/v1beta/models/x%0d%0a2026-01-01 INFO forged:generateContent?key={KEYS['bad_path']}"
        assert c.post(bad, json=text).status_code == 400
    outcomes = []
    ws = url.replace("http://", "ws://")
    for path, headers in [
        (
            "/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
            f"?key={KEYS['ws_query']}",
            {"Authorization": f"Bearer {KEYS['ws_bearer']}"},
        ),
        (f"/api/stream?key={KEYS['ws_api']}&x=1", {"x-goog-api-key": KEYS["ws_api"]}),
        (f"/nowhere/ws?api_key={KEYS['ws_query']}", {}),
        # the relayed route (OpenAI Responses over WebSocket): the upstream refuses, the proxy logs it
        (f"/openai/v1/responses?key={KEYS['ws_relay']}", {"Authorization": f"Bearer {KEYS['ws_relay']}"}),
        # the WebSocket relay's path: this upstream has no WebSocket mode, so the upgrade is refused
        (
            f"/openai/v1/realtime?model=gpt-realtime&api_key={KEYS['ws_relay_query']}",
            {"Authorization": f"Bearer {KEYS['ws_relay_bearer']}"},
        ),
    ]:
        try:
            with websockets.sync.client.connect(ws + path, additional_headers=headers, open_timeout=5):
                outcomes.append("open")
        except websockets.exceptions.InvalidStatus as e:
            outcomes.append(str(e.response.status_code))
        except (websockets.exceptions.WebSocketException, OSError) as e:
            outcomes.append(type(e).__name__)
    return outcomes


@pytest.mark.parametrize("level", ["info", "debug"])
def test_no_log_line_holds_a_planted_key(level: str, fake: FakeUpstream, tmp_path: Path) -> None:
    config = write_config(tmp_path, fake.url)
    with serve_process(config, f"sqlite:///{tmp_path / 'ledger.db'}", args=("--log-level", level)) as server:
        outcomes = drive(server.url)
    logs = server.logs()
    assert "llmbudget serving on" in logs  # the logs were captured at all
    assert outcomes and all(o != "open" for o in outcomes), outcomes
    # uvicorn logs WebSocket upgrades with their full target even without an access log: seen, redacted
    assert '"WebSocket /gemini/ws/google.ai.generativelanguage' in logs
    assert "?[redacted]" in logs
    assert "proxy_connect_failed backend=dead" in logs
    assert '"WebSocket /openai/v1/responses?[redacted]"' in logs
    assert "proxy_ws_upstream_refused backend=openai path=/v1/realtime" in logs
    assert outcomes[-1] == "426", outcomes
    for name, key in KEYS.items():
        assert key not in logs, f"the {name} key is in the log"
        assert key[4:20] not in logs, f"part of the {name} key is in the log"
    # a client-chosen CR/LF never starts a line of its own
    assert not any(line.startswith("2026-01-01 INFO forged") for line in logs.splitlines())
    if level == "debug":
        # debug lines were written (the WebSocket library's handshake dump among them), none with a key
        assert "DEBUG:    < authorization: [redacted]" in logs
