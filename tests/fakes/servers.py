"""Run llmbudget's real ASGI app under a real uvicorn on 127.0.0.1 (random port), in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from llmbudget.app import build_app
from llmbudget.config import Config
from llmbudget.services import Services
from llmbudget.store import open_ledger


def free_port() -> int:
    """A TCP port nothing listens on (for a backend that must refuse connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningProxy:
    url: str
    services: Services
    app: Any
    server: uvicorn.Server

    def events(self, **filters: str) -> list[Any]:
        """Every event recorded so far matching `filters`, oldest first (flushes the ledger first)."""
        self.services.ledger.flush()
        return list(reversed(self.services.ledger.query(filters=filters or None, limit=None)))

    def wait_events(self, n: int, timeout: float = 5.0, **filters: str) -> list[Any]:
        """Wait until `n` events match (recording happens after the answer went out)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(**filters)
            if len(found) >= n or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@contextlib.contextmanager
def running_proxy(
    config: Config, db_path: Path, parts: dict[str, Any] | None = None
) -> Iterator[RunningProxy]:
    """Serve `build_app(services)` with uvicorn (uvloop, httptools, no access log) until the block ends."""
    from llmbudget.pricing import PriceBook

    ledger = open_ledger(
        f"sqlite:///{db_path}", audit_log=str(db_path.with_suffix(".jsonl")), flush_interval_s=0.05
    )
    services = Services(config=config, ledger=ledger, prices=PriceBook.from_config(config), **(parts or {}))
    app = build_app(services)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    cfg = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        interface="asgi3",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )
    server = uvicorn.Server(cfg)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="llmbudget-uvicorn"
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield RunningProxy(url=f"http://127.0.0.1:{port}", services=services, app=app, server=server)
    finally:
        hub = services.live
        if hub is not None:  # open live streams would hold uvicorn's graceful shutdown
            hub.end_streams()
        server.should_exit = True
        thread.join(15)
        sock.close()
        services.close()
