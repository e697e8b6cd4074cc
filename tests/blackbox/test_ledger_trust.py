"""The ledger from the outside: `llmbudget serve` in its own process, official SDKs as clients, the CLI
in another process, `kill -9`, a PostgreSQL outage made by cutting a relay in front of it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fakes import upstream as fx
from fakes.tcpproxy import TcpRelay

#: a `Server` from conftest.py (`serve` fixture)
Server = Any

MESSAGES = [{"role": "user", "content": "Say hello in a few words, please."}]
#: what a broken provider might report: no call has 10**20 input tokens
ABSURD_USAGE = {**fx.OPENAI_CHAT_USAGE, "prompt_tokens": 10**20, "total_tokens": 10**20 + 300}


def _visible_ids(cli_json: Callable[..., Any], db: str) -> set[str]:
    out = cli_json("events", "--db", db, "--limit", "1000")
    return {e["id"] for e in out["events"]}


def test_a_trickle_of_calls_is_visible_to_the_cli_at_once(
    serve: Callable[..., Server], cli_json: Callable[..., Any]
) -> None:
    """Calls two seconds apart: each one is in `llmbudget events --json` right after its answer."""
    server = serve()
    client = server.openai()
    for i in range(4):
        if i:
            time.sleep(2.0)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        raw.parse()
        event_id = raw.headers["x-llmbudget-request-id"]
        time.sleep(0.3)  # flush_interval_s is 0.2 s; the CLI below takes longer than that to start
        assert event_id in _visible_ids(cli_json, server.db), f"call {i} not visible with the server running"
    assert server.running()


class Load:
    """`n` threads calling the proxy with the OpenAI SDK (half streamed) until stopped."""

    def __init__(self, server: Server, n: int = 20) -> None:
        self.server = server
        self.answered: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def _run(self, i: int) -> None:
        client = self.server.openai(timeout=10)
        k = 0
        while not self._stop.is_set():
            k += 1
            try:
                if (i + k) % 2:
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", messages=MESSAGES
                    )
                    raw.parse()
                    event_id = raw.headers["x-llmbudget-request-id"]
                else:
                    with client.chat.completions.with_streaming_response.create(
                        model="gpt-4o-mini", messages=MESSAGES, stream=True
                    ) as resp:
                        event_id = resp.headers["x-llmbudget-request-id"]
                        for _ in resp.parse():
                            pass
            except Exception:  # the server was killed mid-call: not answered
                with self._lock:
                    self.failed += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.answered.append(event_id)
        client.close()

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} calls answered"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)


def _check_every_answered_call_recorded_once(
    server: Server, cli_json: Callable[..., Any], answered: list[str]
) -> None:
    events = server.events()
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} of {len(answered)} answered calls lost"
    costs = cli_json("costs", "--db", server.db, "--config", str(server.config), "--since", "1d")
    assert costs["total"]["calls"] == len(ids)  # the rollups count each event once


def test_kill_9_mid_load_loses_no_answered_call(
    serve: Callable[..., Server], cli_json: Callable[..., Any]
) -> None:
    server = serve()
    load = Load(server, 20).start()
    try:
        load.wait_for(150)
        server.kill()
    finally:
        load.stop()
    answered = list(load.answered)
    server.restart()  # replays the audit log's lines the database does not have
    _check_every_answered_call_recorded_once(server, cli_json, answered)


def test_postgres_outage_with_kill_9_in_the_middle_loses_nothing(
    pg_url: str, serve: Callable[..., Server], cli_json: Callable[..., Any]
) -> None:
    where = urlsplit(pg_url)
    relay = TcpRelay((where.hostname or "127.0.0.1", where.port or 5432)).start()
    try:
        db = pg_url.replace(f"@{where.hostname}:{where.port}/", f"@127.0.0.1:{relay.port}/")
        assert db != pg_url
        server = serve(db=db)
        load = Load(server, 20).start()
        try:
            load.wait_for(50)
            relay.cut()  # PostgreSQL unreachable for the ledger (the server itself keeps running)
            during = load.count()
            time.sleep(2.5)
            assert load.count() > during + 20, "calls stopped being answered during the outage"
            server.kill()
        finally:
            load.stop()
        answered = list(load.answered)
        relay.restore()
        server.restart()
        _check_every_answered_call_recorded_once(server, cli_json, answered)
    finally:
        relay.stop()


def test_a_poison_import_reports_the_bad_lines_and_loads_the_rest(
    tmp_path: Path, llmbudget: Callable[..., Any], cli_json: Callable[..., Any]
) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    good = [
        {"timestamp": "2026-03-01T12:00:00Z", "backend": "openai", "model": "gpt-4o", "prompt_tokens": 10 + i}
        for i in range(5)
    ]
    lines = [json.dumps(g) for g in good[:2]]
    lines.append(json.dumps({**good[0], "prompt_tokens": 10**20}))
    lines.append(json.dumps({**good[0], "agent": "planner\u0000"}))
    lines.append(
        json.dumps({"id": "x", "backend": "b", "model": "m", "input_tokens": 10**20, "source": "import"})
    )
    lines += [json.dumps(g) for g in good[2:]]
    path = tmp_path / "usage.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = llmbudget("import", str(path), "--db", db, "--json")
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["loaded"] == 5 and report["bad_lines"] == 3
    by_line = {e["line"]: e for e in report["errors"]}
    assert by_line[3]["field"] == "prompt_tokens" and "bound" in by_line[3]["message"]
    assert by_line[4]["field"] == "agent" and "NUL" in by_line[4]["message"]
    assert by_line[5]["field"] == "input_tokens"
    events = cli_json("events", "--db", db)["events"]
    assert len(events) == 5
    assert all(e["input_tokens"] < 100 for e in events)


def test_a_poison_upstream_answer_is_recorded_with_a_trusted_value_and_a_reason(
    serve: Callable[..., Server], cli_json: Callable[..., Any]
) -> None:
    server = serve()
    client = server.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-fake-usage": json.dumps(ABSURD_USAGE)}
    )
    assert raw.parse().choices[0].message.content  # the client got its answer
    bad_id = raw.headers["x-llmbudget-request-id"]
    ok = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    ok.parse()
    time.sleep(0.3)
    events = {e["id"]: e for e in cli_json("events", "--db", server.db)["events"]}
    bad = events[bad_id]
    # the estimate from the request, raised to the cached part the provider also reported: not 10**20
    assert bad["cached_input_tokens"] == fx.OPENAI_CHAT_USAGE["prompt_tokens_details"]["cached_tokens"]
    assert bad["cached_input_tokens"] <= bad["input_tokens"] < 10_000
    assert bad["output_tokens"] == fx.OPENAI_CHAT_USAGE["completion_tokens"]  # what could be trusted stays
    assert "input_tokens" in bad["reason"] and "100000000000000000000" in bad["reason"]
    assert (
        events[ok.headers["x-llmbudget-request-id"]]["input_tokens"] == fx.OPENAI_CHAT_USAGE["prompt_tokens"]
    )
    assert cli_json("db", "quarantine", "--db", server.db)["count"] == 0
    assert server.running()
