"""Calls other processes put in the ledger, for the live pages of a running server.

The proxy publishes its own calls to the live fan-out as it records them. Calls that reach the
ledger another way (`llmbudget import`, `import claude-code --watch`, `import codex --watch`,
`wrap()` in another process) would show on an open page only after a reload; `LedgerFollower`
finds them: every second the fan-out asks it for events of those sources recorded in the last
`window_s` that it has not handed out yet (an import's events carry the time of the call, seconds
to minutes before they are imported).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

from .events import UsageEvent, utcnow
from .store.base import Ledger

#: ids remembered as handed out (the oldest are forgotten first)
SEEN_MAX = 100_000


class LedgerFollower:
    """`poll()` returns the events not recorded by a proxy (`Ledger.recorded_elsewhere`) that it did
    not return before, oldest first."""

    def __init__(
        self, ledger: Ledger, *, window_s: float = 900.0, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.ledger = ledger
        self.window = timedelta(seconds=window_s)
        self.clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._primed = False

    def poll(self) -> list[UsageEvent]:
        found = self.ledger.recorded_elsewhere(self.clock() - self.window)
        seen = self._seen
        fresh = [e for e in found if e.id not in seen]
        for e in fresh:
            seen[e.id] = None
        while len(seen) > SEEN_MAX:
            seen.popitem(last=False)
        if not self._primed:  # what was there when the server started is not news
            self._primed = True
            return []
        return sorted(fresh, key=lambda e: e.timestamp)
