"""Re-pricing recorded calls: price the unpriced ones once a price exists, or rewrite every cost in range.

`llmbudget reprice` is a thin shell over `reprice()`; anything else that re-prices calls the same
function. Each call gets the price in force at its own timestamp; `local` calls are kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .config import Config
from .money import decimal_str, from_nano
from .pricing import PriceBook, TokenUsage
from .store import Ledger

#: cost updates written per transaction
BATCH = 2000


def reprice(
    cfg: Config,
    ledger: Ledger,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    all_events: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Re-price the unpriced calls in range (every call with `all_events`) and write the changed costs
    unless `dry_run`. Returns what `llmbudget reprice --json` prints; `progress(examined, total)` is
    called as events are read. The caller reconciles budget counters when `written` is not zero."""
    book = PriceBook.from_config(cfg)
    local_backends = {name for name, b in cfg.backends.items() if b.local}
    filters = None if all_events else {"price_status": "unpriced"}
    total = ledger.count(since=since, until=until, filters=filters)
    examined = 0
    changed = 0
    pending: list[tuple[str, int | None, str]] = []
    delta_nano = 0
    newly_priced: Counter[str] = Counter()
    still: Counter[str] = Counter()
    written = 0
    for ev in ledger.iter_events(since=since, until=until, filters=filters):
        examined += 1
        if ev.price_status == "local":
            continue  # decided by the backend at capture time, not by a price
        nano: int | None
        if ev.provider == "local" or ev.backend in local_backends:
            nano, status = 0, "local"
        else:
            nano, status = book.cost_nano(
                ev.model, TokenUsage.from_event(ev), provider=ev.provider, at=ev.timestamp
            )
        old = ev.cost_nano
        if (nano, status) != (old, ev.price_status):
            changed += 1
            pending.append((ev.id, nano, status))
            delta_nano += (nano or 0) - (old or 0)
            if old is None and status in ("priced", "override"):
                newly_priced[ev.model] += 1
        if nano is None:
            still[ev.model] += 1
        if not dry_run and len(pending) >= BATCH:
            written += ledger.update_costs(pending)
            pending = []
        if progress is not None and examined & 0xFF == 0:
            progress(examined, total)
    if not dry_run and pending:
        written += ledger.update_costs(pending)
    return {
        "dry_run": dry_run,
        "all": all_events,
        "examined": examined,
        "changed": changed,
        "written": 0 if dry_run else written,
        "newly_priced": sum(newly_priced.values()),
        "still_unpriced": sum(still.values()),
        "cost_delta_usd": decimal_str(from_nano(delta_nano)),
        "cost_delta_nano": delta_nano,
        "newly_priced_by_model": dict(newly_priced.most_common()),
        "still_unpriced_by_model": dict(still.most_common()),
    }
