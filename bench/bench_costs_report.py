"""A month's `costs(by="backend")` over 10 M events on SQLite, from the rollups.

Target (README, Benchmarks): <= 200 ms. The 10 M-event ledger is generated once by
gen_events.py into bench/data/ (gitignored, several GB, a few minutes) and reused. Reported: p50
and max of several runs, in UTC and in Europe/Berlin (whose March has a DST switch, so the month
is 743 hours and its edges are hourly rollups), plus by day and the plain total.

    python bench/bench_costs_report.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gen_events import cached_db

from llmbudget.store import open_ledger


def _p50(fn: Any, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2), round(max(times), 2)


def main(quick: bool = False) -> dict[str, Any]:
    """Run the report benchmark; returns the figures (milliseconds)."""
    n = 200_000 if quick else 10_000_000
    url = cached_db(n)
    figures: dict[str, Any] = {"events": n}
    with open_ledger(url, audit=False) as led:
        assert led.count() == n
        for zone in ("UTC", "Europe/Berlin"):
            tz = ZoneInfo(zone)
            since, until = datetime(2026, 3, 1, tzinfo=tz), datetime(2026, 4, 1, tzinfo=tz)
            rows = led.costs(since=since, until=until, by="backend", tz=tz)  # warm the page cache
            figures[f"month_calls_{zone}"] = sum(r.calls for r in rows)
            tag = zone.split("/")[-1].lower()
            for by in ("backend", "day", None):
                p50, worst = _p50(
                    lambda by=by, since=since, until=until, tz=tz: led.costs(
                        since=since, until=until, by=by, tz=tz
                    ),
                    7,
                )
                figures[f"costs_by_{by or 'total'}_{tag}_p50_ms"] = p50
                figures[f"costs_by_{by or 'total'}_{tag}_max_ms"] = worst
        since, until = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
        # a ragged range: raw scans of the partial hours at both ends
        ragged = datetime(2026, 3, 3, 10, 17, tzinfo=UTC), datetime(2026, 3, 28, 14, 41, tzinfo=UTC)
        p50, worst = _p50(lambda: led.costs(since=ragged[0], until=ragged[1], by="backend"), 7)
        figures["costs_by_backend_ragged_range_p50_ms"] = p50
        kol = ZoneInfo("Asia/Kolkata")
        p50, worst = _p50(lambda: led.costs(since=since, until=until, by="day", tz=kol), 3)
        figures["costs_by_day_kolkata_p50_ms"] = p50
    figures["target_ms"] = 200
    figures["meets_target"] = figures["costs_by_backend_berlin_p50_ms"] <= 200 and (
        figures["costs_by_backend_utc_p50_ms"] <= 200
    )
    for k, v in figures.items():
        print(f"  {k:42s} {v}")
    return figures


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
