"""Report worker processes never outlive `llmbudget serve`, even when it is killed with kill -9."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def _children(pid: int) -> set[int]:
    """Processes whose parent is `pid` (read from /proc, as `ps --ppid` would)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_report_workers_end_when_serve_is_killed(serve: Callable[..., Any]) -> None:
    server = serve()
    with server.openai() as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # a report runs in the worker processes beside the proxy
    answer = httpx.get(server.url + "/api/costs", params={"by": "day", "since": "7d"}, timeout=60)
    assert answer.status_code == 200, answer.text
    workers = {p for p in _children(server.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}
    assert workers, "no report worker process was started"
    server.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "report workers outlived the killed server"
