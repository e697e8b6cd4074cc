"""A Codex-shaped run over WebSocket through `llmbudget serve` in its own process, read back by the CLI.

Codex's built-in provider opens `ws://.../v1/responses`, sends `response.create` and reads events
until `response.completed`. Here the same run goes through `llmbudget serve` to a fake OpenAI
WebSocket upstream, and `llmbudget events --json` in another process shows the metered response.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets.sync.client as wsclient
import yaml
from fakes import ws_upstream as fx
from fakes.ws_upstream import FakeWebSocketUpstream

#: Codex CLI's upgrade headers (codex-rs default_client.rs, codex-api build_session_headers)
CODEX_HEADERS = {
    "user-agent": "codex_cli_rs/0.172.0 (Ubuntu 24.4.0; x86_64) xterm-256color",
    "originator": "codex_cli_rs",
    "authorization": "Bearer sk-codex-test",
}


def codex_run(url: str, session: str) -> tuple[float, list[dict[str, Any]]]:
    """Connect, send one response.create, read until response.completed; (seconds, events)."""
    t0 = time.perf_counter()
    with wsclient.connect(
        url.replace("http://", "ws://") + "/openai/v1/responses",
        additional_headers={**CODEX_HEADERS, "session-id": session},
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "hello"}))
        events = []
        while True:
            event = json.loads(ws.recv(timeout=10))
            events.append(event)
            if event["type"] == "response.completed":
                break
    return time.perf_counter() - t0, events


def test_codex_shaped_websocket_run_is_metered_and_seen_from_another_process(
    serve: Callable[..., Any],
    fake_ws_upstream: FakeWebSocketUpstream,
    tmp_path: Path,
    cli_json: Callable[..., Any],
) -> None:
    config = tmp_path / "llmbudget.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {"openai": {"kind": "openai", "base_url": fake_ws_upstream.url}},
                "storage": {"flush_interval_s": 0.1},
            }
        )
    )
    server = serve(config=config, args=("--log-level", "debug"))
    sid = str(uuid.uuid4())
    took, events = codex_run(server.url, sid)
    assert events[-1]["type"] == "response.completed"
    assert took < 2.0, f"a Codex-shaped run took {took:.2f} s"
    deadline = time.monotonic() + 10
    while True:
        rows = cli_json("events", "--session", sid, "--db", server.db, "--config", str(config))["events"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows) == 1, rows
    [row] = rows
    usage = events[-1]["response"]["usage"]
    assert row["agent"] == "codex" and row["source"] == "proxy" and row["streamed"] is True
    assert row["model"] == fx.RESPONSES_MODEL and row["status"] == "ok"
    assert row["input_tokens"] == usage["input_tokens"] and row["output_tokens"] == usage["output_tokens"]
    assert row["cost_usd"] not in (None, "0", 0)
    # a Realtime connection whose URL carries a key: relayed, and the key is in no log line
    planted = "sk-PLANTEDrealtimequery00000000000000042"
    in_protocol = "sk-PLANTEDsubprotocol000000000000000043"
    with wsclient.connect(
        server.url.replace("http://", "ws://")
        + f"/openai/v1/realtime?model={fx.REALTIME_MODEL}&api_key={planted}",
        # a browser's Realtime client carries its key in a subprotocol
        subprotocols=["realtime", f"openai-insecure-api-key.{in_protocol}"],  # type: ignore[list-item]
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        assert ws.subprotocol == "realtime"
    assert fake_ws_upstream.connections[-1]["query"].endswith(planted)  # it did go upstream
    time.sleep(0.3)
    logs = server.logs()
    assert "proxy_ws_open backend=openai path=/v1/responses" in logs
    assert "proxy_ws_open backend=openai path=/v1/realtime" in logs
    assert "sec-websocket-protocol: [redacted]" in logs.lower()  # the debug dump was written
    for key in (planted, in_protocol):
        assert key not in logs and key[3:20] not in logs
