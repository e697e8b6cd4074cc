"""Start the demo: simulated upstream, the real app (`build_app`, as `serve`), simulated agents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from ..app import build_app
from ..config import ENV_HOME, Config
from ..services import Services
from .agents import run_agents
from .upstream import SimulatedUpstream


def demo_config(upstream_url: str, *, port: int, db_url: str, audit_log: str) -> Config:
    """The demo's configuration: three backends on the simulator and budgets that bind within seconds."""
    return Config.model_validate(
        {
            "backends": {
                "openai": {"kind": "openai", "base_url": f"{upstream_url}/openai", "provider": "openai"},
                "anthropic": {
                    "kind": "anthropic",
                    "base_url": f"{upstream_url}/anthropic",
                    "provider": "anthropic",
                },
                "local": {"kind": "openai", "base_url": f"{upstream_url}/local", "local": True},
            },
            "storage": {"url": db_url, "audit_log": audit_log, "flush_interval_s": 0.2},
            "server": {"host": "127.0.0.1", "port": port},
            "budgets": {
                "fallback": "local",
                "fallback_model": "llama3.2",
                "limits": [
                    {
                        "name": "team-month",
                        "scope": "global",
                        "limit_usd": 25,
                        "period": "month",
                        "action": "alert",
                        "warn": [0.5, 0.8],
                    },
                    {
                        "name": "looper-day",
                        "scope": "agent",
                        "match": "looper",
                        "limit_usd": 0.6,
                        "period": "day",
                        "action": "pause",
                    },
                    {
                        "name": "summarizer-day",
                        "scope": "agent",
                        "match": "summarizer",
                        "limit_usd": 0.03,
                        "period": "day",
                        "action": "fallback",
                    },
                ],
            },
        }
    )


class AgentThread:
    """The simulated agents on their own event loop, started once the proxy answers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="llmbudget-demo-agents", daemon=True)

    def start(self) -> AgentThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            await _wait_healthy(self.base, self._stop)
            await run_agents(self.base, self._stop)

        self._loop.run_until_complete(main())
        self._loop.close()

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already finished
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


async def _wait_healthy(base: str, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            try:
                async with s.get(base + "/healthz") as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.1)


def run_demo(
    *,
    port: int,
    db: str | None,
    duration: float | None,
    announce: Any,
    server_factory: Any,
    run_server: Any,
) -> None:
    """Run until Ctrl-C (or `duration` seconds).

    `announce(text)` prints; `server_factory(app, services)` builds serve's uvicorn server and
    `run_server(server)` runs it until it stops (Ctrl-C, SIGTERM, or `should_exit`).
    """
    tmp = Path(tempfile.mkdtemp(prefix="llmbudget-demo-"))
    # quota logs, spool and anything else kept in the data directory stay in the demo's own
    os.environ[ENV_HOME] = str(tmp)
    db_url = db or f"sqlite:///{tmp / 'demo.db'}"
    upstream = SimulatedUpstream().start()
    agents: AgentThread | None = None
    timer: threading.Timer | None = None
    services = None
    try:
        cfg = demo_config(upstream.url, port=port, db_url=db_url, audit_log=str(tmp / "audit.jsonl"))
        services = Services.create(cfg)
        app = build_app(services)
        server = server_factory(app, services)
        base = f"http://127.0.0.1:{port}"
        announce(
            f"llmbudget demo: dashboard at {base}/\n"
            f"  simulated agents planner, coder, reviewer, summarizer (falls back to a local model) and\n"
            f"  looper (a runaway loop its budget pauses) call a simulated OpenAI/Anthropic; no API key needed.\n"
            f"  ledger: {db_url}  (llmbudget events --db '{db_url}')\n"
            f"  metrics: {base}/metrics   Ctrl-C stops it."
        )
        agents = AgentThread(base).start()
        if duration is not None:
            timer = threading.Timer(duration, lambda: setattr(server, "should_exit", True))
            timer.daemon = True
            timer.start()
        started = time.monotonic()
        run_server(server)
        announce(f"llmbudget demo stopped after {time.monotonic() - started:.0f} s")
    finally:
        if timer is not None:
            timer.cancel()
        if agents is not None:
            agents.stop()
        upstream.stop()
        if services is not None:
            services.close()
        shutil.rmtree(tmp, ignore_errors=True)  # the ledger itself stays when --db named one
