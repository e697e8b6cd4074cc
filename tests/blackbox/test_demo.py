"""`llmbudget demo` as its own process: read from outside (the JSON API, `/metrics`, and the CLI in
other processes) it shows several agents and providers, a runaway agent paused by its budget, a
fallback to the local model and an account near its 5-hour limit; Ctrl-C and `--duration` stop it.

The dashboard is shot in Debian's chromium; `LLMBUDGET_UPDATE_SCREENSHOT=1` also writes it to
docs/demo.png (the README's picture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import LLMBUDGET
from fakes.servers import free_port
from playwright.sync_api import Page, expect
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str, Path]:
    port = free_port()
    log = tmp_path / f"demo-{port}.out"
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [str(LLMBUDGET), "demo", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base, log
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def _until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_demo_moves_and_stops_on_ctrl_c(tmp_path: Path, cli_json: Callable[..., Any], page: Page) -> None:
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    proc, base, log = _start(tmp_path, "--db", db)
    try:
        assert f"dashboard at {base}/" in log.read_text()

        def seen() -> Any:
            events = cli_json("events", "--db", db, "--limit", "2000")["events"]
            paused = cli_json("agents", "list", "--db", db)["paused_agents"]
            agents = {e["agent"] for e in events}
            ok = (
                {"planner", "coder", "reviewer", "summarizer", "looper"} <= agents
                and any(p["agent"] == "looper" for p in paused)
                and any(e["status"] == "fallback" for e in events)
            )
            return (events, paused) if ok else None

        got = _until(seen)
        assert got, log.read_text()[-3000:]
        events, paused = got
        assert {e["provider"] for e in events} >= {"openai", "anthropic", "local"}
        looper = next(p for p in paused if p["agent"] == "looper")
        assert looper["budget"] == "looper-day" and looper["by"] == "budget"
        assert any(e["agent"] == "looper" and e["status"] == "blocked" for e in events)
        fallback = [e for e in events if e["status"] == "fallback"]
        assert {(e["agent"], e["backend"], e["model"]) for e in fallback} == {
            ("summarizer", "local", "llama3.2")
        }
        assert {e["session"] for e in events} >= {"sprint-42", "review-7", "loop-1"}

        quota = httpx.get(f"{base}/api/quota", timeout=10).json()
        claude = next(b for b in quota["backends"] if b["backend"] == "anthropic")
        assert claude["severity"] == "WARNING"
        assert 0.8 <= claude["reading"]["windows"]["5h"]["utilization"] < 1.0

        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(metrics)
            for s in fam.samples
        }
        assert samples[("llmbudget_agent_paused", (("agent", "looper"),))] == 1.0
        cost_agents = {dict(k[1])["agent"] for k in samples if k[0] == "llmbudget_cost_usd_total"}
        assert {"planner", "coder", "looper"} <= cost_agents

        page.set_viewport_size({"width": 1280, "height": 1000})
        page.goto(base + "/")
        expect(page.locator("#live")).to_contain_text("live", timeout=5000)
        expect(page.locator("body")).to_contain_text("looper", timeout=10000)
        expect(page.locator("body")).to_contain_text("summarizer")
        time.sleep(1.5)  # a few live increments land on the cards
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        if os.environ.get("LLMBUDGET_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=str(ROOT / "docs" / "demo.png"), full_page=True)

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = log.read_text()
    assert "llmbudget demo stopped" in out and "Traceback" not in out
    # the ledger named by --db is kept, with every answered call in it
    after = cli_json("events", "--db", db, "--limit", "2000")["events"]
    assert len(after) >= len(events)


def test_demo_duration_stops_by_itself(tmp_path: Path) -> None:
    proc, base, log = _start(tmp_path, "--duration", "4")
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = log.read_text()
    assert f"dashboard at {base}/" in out and "llmbudget demo stopped after" in out
    assert "Traceback" not in out
    ledger = out.split("ledger: sqlite:///", 1)[1].split()[0]
    assert not Path(ledger).exists()  # the temporary ledger is gone with its directory
