"""In-process Meter update timings: single thread and contended (8 threads), with and without a subscriber.

    .venv/bin/python bench/bench_meter.py

Target (README, Benchmarks): a meter update <= 5 µs. `main()` returns the figures as a dict
(µs per update) for `bench/run_all.py`.
"""

from __future__ import annotations

import sys
import threading
import time
import timeit
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmbudget.events import UsageEvent
from llmbudget.meter import Meter

TARGET_UPDATE_US = 5.0


def _per_call_us(fn: Any, number: int, repeat: int = 3) -> float:
    """Best of `repeat` runs, µs per call (the least disturbed run on a shared machine)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def _contended_us(threads: int, per_thread: int) -> float:
    """Wall time per update with `threads` threads recording at once (all updates, all threads)."""
    meter = Meter()
    cost = Decimal("0.00042")
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        rec = meter.record
        tier = ("fast", "smart", "reasoning", "local")[i % 4]
        barrier.wait()
        for _ in range(per_thread):
            rec(
                tier=tier,
                agent=f"agent{i}",
                model="gpt-4o",
                input_tokens=1200,
                output_tokens=300,
                cost_usd=cost,
            )

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    assert meter.snapshot()["session"]["calls"] == threads * per_thread  # nothing lost
    return elapsed / (threads * per_thread) * 1e6


def main(number: int = 200_000, quiet: bool = False, quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; print a summary unless `quiet`; return the figures in µs per update.

    `quick` (bench/run_all.py --quick) runs a tenth of the updates.
    """
    if quick:
        number = max(number // 10, 10_000)
    meter = Meter()
    cost = Decimal("0.00042")
    event = UsageEvent(
        backend="openai",
        model="gpt-4o",
        input_tokens=1200,
        output_tokens=300,
        cost_usd=cost,
        price_status="priced",
        agent="planner",
        tier="smart",
    )
    figures: dict[str, Any] = {
        "kwargs_decimal_us": _per_call_us(
            lambda: meter.record(
                tier="smart",
                agent="planner",
                model="gpt-4o",
                input_tokens=1200,
                output_tokens=300,
                cost_usd=cost,
            ),
            number,
        ),
        "kwargs_nano_us": _per_call_us(
            lambda: meter.record(
                tier="smart",
                agent="planner",
                model="gpt-4o",
                input_tokens=1200,
                output_tokens=300,
                cost_nano=420_000,
            ),
            number,
        ),
        "event_us": _per_call_us(lambda: meter.record(event), number),
        "unpriced_us": _per_call_us(lambda: meter.record(model="mystery", input_tokens=10), number),
    }
    seen = [0]

    def subscriber(_update: Any) -> None:
        seen[0] += 1

    unsubscribe = meter.subscribe(subscriber)
    figures["with_subscriber_us"] = _per_call_us(lambda: meter.record(event), number)
    unsubscribe()
    gui_unsubscribe = meter.subscribe(lambda snap: None, coalesce_s=0.1)
    figures["with_coalescing_subscriber_us"] = _per_call_us(lambda: meter.record(event), number)
    gui_unsubscribe()
    figures["snapshot_us"] = _per_call_us(meter.snapshot, max(number // 20, 1000))
    figures["contended_8_threads_us"] = _contended_us(8, max(number // 8, 10_000))
    worst_single = max(figures["kwargs_decimal_us"], figures["kwargs_nano_us"], figures["event_us"])
    figures["worst_single_thread_us"] = worst_single
    figures["target_update_us"] = TARGET_UPDATE_US
    figures["meets_target"] = worst_single <= TARGET_UPDATE_US
    if not quiet:
        for name, value in figures.items():
            if name.endswith("_us"):
                print(f"{name:<32} {value:>8.2f} µs")
        verdict = "OK" if figures["meets_target"] else "MISSED"
        print(f"single-thread update worst {worst_single:.2f} µs vs target {TARGET_UPDATE_US} µs: {verdict}")
    return figures


if __name__ == "__main__":
    main()
