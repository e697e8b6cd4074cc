"""A writer process for tests/test_shutdown.py: records events forever, printing each accepted id.

    python tests/ledger_writer.py URL [chain]

With `chain`, a previous SIGTERM handler is installed first; it prints `previous-handler` and
exits with status 3, so the test can see that ours ran and then handed the signal on.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

from llmbudget.events import UsageEvent
from llmbudget.store import install_signal_handlers, open_ledger


def main() -> None:
    url = sys.argv[1]
    if len(sys.argv) > 2 and sys.argv[2] == "chain":

        def previous(signum: int, frame: FrameType | None) -> None:
            print("previous-handler", flush=True)
            sys.exit(3)

        signal.signal(signal.SIGTERM, previous)
    # a long interval and a big batch: at the kill most accepted events are still in memory
    ledger = open_ledger(url, batch_size=5000, flush_interval_s=30)
    install_signal_handlers()
    i = 0
    while True:
        ev = UsageEvent(backend="b", model="m", agent="writer", session=f"s{i // 100}")
        ledger.record(ev)
        print(ev.id, flush=True)
        i += 1
        if i % 50 == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    main()
