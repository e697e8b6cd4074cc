"""Report functions for `ReportPool` tests: module-level, so a spawned worker process can import them."""

from __future__ import annotations

import os
import time
from typing import Any

from llmbudget.errors import ValidationError


def whoami(ledger: Any, *, tag: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "tag": tag,
        "ledger_url": ledger.url,
        "calls": len(ledger.query(limit=100)),
        "policy": os.sched_getscheduler(0),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }


def refuse(ledger: Any) -> dict[str, Any]:
    raise ValidationError("since", "cannot read 'soon'")


def crash(ledger: Any) -> dict[str, Any]:
    os._exit(3)


def slow(ledger: Any, *, seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}
