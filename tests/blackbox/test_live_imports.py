"""An open dashboard sees calls another process puts in the ledger (an import) without a reload."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx


def _read_live(url: str, seen: list[dict[str, Any]], stop: threading.Event) -> None:
    """What an open page receives: the live stream's usage increments (until the server stops)."""
    try:
        with httpx.stream("GET", url + "/api/live", timeout=httpx.Timeout(5, read=None)) as r:
            event = ""
            for line in r.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "usage":
                    seen.append(json.loads(line[5:]))
    except httpx.HTTPError:  # the server went away at the end of the test
        return


def test_an_open_page_gets_imported_calls_within_seconds(
    serve: Callable[..., Any], llmbudget: Callable[..., Any], tmp_path: Path
) -> None:
    server = serve()
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_read_live, args=(server.url, seen, stop), daemon=True)
    reader.start()
    time.sleep(1.5)  # the stream is open and the server has looked at the ledger once
    event_id = str(uuid.uuid4())
    line = {
        "id": event_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "backend": "openai",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "agent": "imported-bot",
        "input_tokens": 100,
        "output_tokens": 20,
    }
    log = tmp_path / "calls.jsonl"
    log.write_text(json.dumps(line) + "\n")
    done = llmbudget("import", str(log), "--db", server.db, "--config", str(server.config))
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(x.get("id") == event_id for x in seen):
        time.sleep(0.1)
    stop.set()
    got = [x for x in seen if x.get("id") == event_id]
    assert len(got) == 1, seen
    assert got[0]["agent"] == "imported-bot" and got[0]["tokens"] == 120
