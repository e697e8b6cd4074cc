"""A writer killed with SIGTERM mid-stream keeps every event it reported as accepted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmbudget.store import open_ledger

WRITER = Path(__file__).with_name("ledger_writer.py")


@pytest.mark.parametrize("mode", ["default", "chain"])
def test_sigterm_mid_stream_flushes_every_accepted_event(ledger_url: str, mode: str) -> None:
    with open_ledger(ledger_url):  # migrate first so the writer starts streaming at once
        pass
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), ledger_url, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert proc.stdout is not None
    accepted: list[str] = []
    deadline = time.monotonic() + 60
    while len(accepted) < 2000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        accepted.append(line.strip())
    assert len(accepted) >= 2000, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    lines = rest.split()
    if mode == "chain":
        assert "previous-handler" in lines, err
        assert proc.returncode == 3
        lines.remove("previous-handler")
    else:
        assert proc.returncode == -signal.SIGTERM, err
    accepted += lines
    with open_ledger(ledger_url) as led:
        stored = {e.id for e in led.iter_events(filters={"agent": "writer"})}
        assert set(accepted) <= stored, f"{len(set(accepted) - stored)} accepted events lost"
        (total,) = led.costs(since=None, until=None)
        assert total.calls == len(stored)
