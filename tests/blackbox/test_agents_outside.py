"""Agents' own traffic from the outside, with `kill -9`: `llmbudget serve` and `llmbudget import
claude-code --watch` each in its own process, read back with the CLI and the dashboard's API.

- Codex-shaped WebSocket sessions (Codex's own upgrade headers, several responses per connection)
  run against `llmbudget serve` until it is killed with SIGKILL: after a restart every response a
  client saw completed is in the ledger once, attributed to Codex's agent and session.
- A Claude Code session whose calls partly go through the proxy and partly elsewhere is logged the
  way Claude Code logs it (each response once per content block) while `import claude-code --watch`
  follows the log; the watcher is killed with SIGKILL mid-session and started again: every response
  is stored once (proxied ones under the proxy's id, `source` telling them apart) and the running
  server's dashboard API shows the session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import websockets.sync.client as wsclient
import yaml
from fakes import ws_upstream as fx
from fakes.ws_upstream import FakeWebSocketUpstream

from llmbudget.events import anthropic_call_id

LLMBUDGET = Path(sys.executable).with_name("llmbudget")
#: a `Server` from conftest.py (`serve` fixture)
Server = Any

#: Codex CLI's upgrade headers (codex-rs default_client.rs, codex-api build_session_headers)
CODEX_HEADERS = {
    "user-agent": "codex_cli_rs/0.172.0 (Ubuntu 24.4.0; x86_64) xterm-256color",
    "originator": "codex_cli_rs",
    "authorization": "Bearer sk-codex-test",
}
#: what Claude Code sends on every call (captured from Claude Code 2.1)
CLAUDE_HEADERS = {
    "user-agent": "claude-cli/2.1.197 (external, cli)",
    "x-app": "cli",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
}


class CodexLoad:
    """`n` threads, each running Codex-shaped sessions: one connection, up to 3 responses, a new
    `session-id` per connection; counts the responses each session saw completed."""

    def __init__(self, server: Server, n: int) -> None:
        self.url = server.url.replace("http://", "ws://") + "/openai/v1/responses"
        self.completed: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def start(self) -> CodexLoad:
        for t in self._threads:
            t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            sid = str(uuid.uuid4())
            try:
                with wsclient.connect(
                    self.url, additional_headers={**CODEX_HEADERS, "session-id": sid}, open_timeout=5
                ) as ws:
                    for _ in range(3):
                        ws.send(
                            json.dumps(
                                {"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "hi"}
                            )
                        )
                        while json.loads(ws.recv(timeout=5))["type"] != "response.completed":
                            pass
                        with self._lock:
                            self.completed[sid] += 1
                        time.sleep(0.02)  # the agent works between turns
            except Exception:  # the server was killed mid-session
                time.sleep(0.05)

    def total(self) -> int:
        with self._lock:
            return sum(self.completed.values())

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.total() < n:
            assert time.monotonic() < deadline, f"only {self.total()} responses completed"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)


def test_codex_websocket_load_with_kill_9_loses_no_completed_response(
    serve: Callable[..., Server], fake_ws_upstream: FakeWebSocketUpstream, tmp_path: Path
) -> None:
    config = tmp_path / "llmbudget.yaml"
    config.write_text(
        yaml.safe_dump({"backends": {"openai": {"kind": "openai", "base_url": fake_ws_upstream.url}}})
    )
    server = serve(config=config)
    load = CodexLoad(server, 8).start()
    try:
        load.wait_for(120)
        server.kill()
    finally:
        load.stop()
    completed = dict(load.completed)
    server.restart()  # replays the audit log's lines the database does not have
    events = server.events()
    assert len({e["id"] for e in events}) == len(events)
    ok = Counter(e["session"] for e in events if e["status"] == "ok")
    short = {sid: (n, ok[sid]) for sid, n in completed.items() if ok[sid] < n}
    assert not short, f"{len(short)} sessions lost completed responses: {list(short.items())[:3]}"
    assert {(e["agent"], e["backend"], e["source"], e["streamed"]) for e in events} == {
        ("codex", "openai", "proxy", True)
    }
    assert all(e["session"] in completed for e in events)


# ---------------------------------------------------------------------------- Claude Code's own log
def _log_lines(sid: str, message_id: str, request_id: str, usage: dict[str, int]) -> str:
    """A response as Claude Code logs it: one line per content block, the usage growing."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    lines = []
    for block, out in (("thinking", max(1, usage["output_tokens"] // 2)), ("text", usage["output_tokens"])):
        lines.append(
            {
                "type": "assistant",
                "sessionId": sid,
                "cwd": "/home/alice/code/webapp",
                "version": "2.1.197",
                "timestamp": now,
                "requestId": request_id,
                "message": {
                    "id": message_id,
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [{"type": block}],
                    "usage": {**usage, "output_tokens": out},
                },
            }
        )
    return "".join(json.dumps(x) + "\n" for x in lines)


class Watcher:
    """`llmbudget import claude-code DIR --watch` in its own process."""

    def __init__(self, root: Path, server: Server) -> None:
        self.args = [
            str(LLMBUDGET), "import", "claude-code", str(root), "--watch", "--interval", "0.2",
            "--db", server.db, "--config", str(server.config),
        ]  # fmt: skip
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Watcher:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=10)

    def stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=20)
        return out


def test_claude_code_watch_beside_serve_counts_each_response_once_through_kill_9(
    serve: Callable[..., Server],
    write_config: Callable[..., Path],
    cli_json: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = serve(config=write_config(storage={"flush_interval_s": 0.1}))
    root = tmp_path / "claude"
    project = root / "projects" / "-home-alice-code-webapp"
    project.mkdir(parents=True)
    sid = str(uuid.uuid4())
    log = project / f"{sid}.jsonl"
    log.touch()
    watcher = Watcher(root, server).start()
    proxied: list[str] = []  # event ids of the responses that went through the proxy
    elsewhere: list[str] = []  # ... and of those that did not (a subscription used directly)
    client = server.anthropic(default_headers={**CLAUDE_HEADERS, "x-claude-code-session-id": sid})
    outputs = []
    try:
        for i in range(40):
            if i == 15:
                watcher.kill()  # mid-session, lines still unsettled
            if i == 25:
                watcher.start()
            if i % 2 == 0:
                raw = client.messages.with_raw_response.create(
                    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
                )
                message = raw.parse()
                request_id = raw.headers["request-id"]
                usage = {
                    "input_tokens": message.usage.input_tokens,
                    "output_tokens": message.usage.output_tokens,
                    "cache_read_input_tokens": message.usage.cache_read_input_tokens or 0,
                    "cache_creation_input_tokens": message.usage.cache_creation_input_tokens or 0,
                }
                message_id = message.id
                proxied.append(anthropic_call_id(request_id) or "")
            else:
                request_id = "req_011C" + uuid.uuid4().hex[:20]
                message_id = "msg_01" + uuid.uuid4().hex[:20]
                usage = {"input_tokens": 12, "output_tokens": 40 + i, "cache_read_input_tokens": 900}
                outputs.append(40 + i)
                elsewhere.append(anthropic_call_id(request_id) or "")
            with log.open("a") as fh:
                fh.write(_log_lines(sid, message_id, request_id, usage))
            time.sleep(0.1)  # an agent's pace: a few responses a second
        deadline = time.monotonic() + 30
        while True:
            rows = cli_json("events", "--session", sid, "--limit", "1000", "--db", server.db)["events"]
            if len(rows) >= 40 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        client.close()
        out = watcher.stop()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 40, (len(ids), out)
    by_id = {r["id"]: r for r in rows}
    assert set(ids) == set(proxied) | set(elsewhere)
    assert {(by_id[i]["source"], by_id[i]["backend"]) for i in proxied} == {("proxy", "anthropic")}
    assert {(by_id[i]["source"], by_id[i]["backend"]) for i in elsewhere} == {("import", "claude-code")}
    assert {r["agent"] for r in rows} == {"claude-code"}
    # the imported responses carry their last content block's usage, not the first's
    assert sorted(by_id[i]["output_tokens"] for i in elsewhere) == sorted(outputs)
    # the running server's dashboard sees the whole session, imported and proxied
    detail = httpx.get(f"{server.url}/api/sessions/{sid}", timeout=10).json()
    assert sum(a["calls"] for a in detail["by_agent"]) == 40, detail
    # and the 5-hour blocks count both
    blocks = cli_json("analyze", "--blocks", "--since", "1d", "--db", server.db)["blocks"]
    assert sum(b["entries"] for b in blocks) == 40
