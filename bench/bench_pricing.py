"""Price lookup timings: cached PriceBook lookups and costs vs genai-prices' calc_price, in one run.

    .venv/bin/python bench/bench_pricing.py

Target (README, Benchmarks): a cached price lookup <= 2 µs. `main()` returns the figures as a
dict (µs per call) for `bench/run_all.py`.
"""

from __future__ import annotations

import sys
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genai_prices import Usage, calc_price

from llmbudget.events import UsageEvent
from llmbudget.pricing import PriceBook, TokenUsage

TARGET_LOOKUP_US = 2.0

#: (model, our provider, genai-prices provider id): a plain model, a tiered one, a time-of-day one
MODELS = [
    ("gpt-4o", "openai", "openai"),
    ("gemini-2.5-pro", "google", "google"),
    ("deepseek-chat", "deepseek", "deepseek"),
    ("claude-sonnet-4-5", "anthropic", "anthropic"),
]


def _per_call_us(fn: Any, number: int, repeat: int = 3) -> float:
    """Best of `repeat` runs, µs per call (the least disturbed run on a shared machine)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main(number: int = 50_000, quiet: bool = False) -> dict[str, Any]:
    """Run the benchmark; print a table unless `quiet`; return the figures in µs per call."""
    book = PriceBook()
    at = datetime(2025, 9, 15, 12, tzinfo=UTC)
    usage = TokenUsage(12_000, 8_000, 0, 900, 300)
    gp_usage = Usage(input_tokens=12_000, cache_read_tokens=8_000, output_tokens=900)
    event = UsageEvent(backend="openai", model="gpt-4o", provider="openai", timestamp=at, **usage.as_dict())
    figures: dict[str, Any] = {}
    rows = []
    for model, ours, gp in MODELS:
        book.lookup(model, provider=ours, at=at)  # warm the cache
        lookup = _per_call_us(lambda m=model, p=ours: book.lookup(m, provider=p, at=at), number)
        lookup_now = _per_call_us(lambda m=model, p=ours: book.lookup(m, provider=p), number)
        cost = _per_call_us(lambda m=model, p=ours: book.cost(m, usage, provider=p, at=at), number)
        nano = _per_call_us(lambda m=model, p=ours: book.cost_nano(m, usage, provider=p, at=at), number)
        direct = _per_call_us(
            lambda m=model, g=gp: calc_price(gp_usage, m, provider_id=g, genai_request_timestamp=at),
            max(number // 50, 200),
        )
        figures[model] = {
            "lookup_us": lookup,
            "lookup_now_us": lookup_now,
            "cost_us": cost,
            "cost_nano_us": nano,
            "calc_price_us": direct,
        }
        rows.append((model, lookup, lookup_now, cost, nano, direct))
    figures["price_event_us"] = _per_call_us(lambda: book.price_event(event), number // 4)
    # a cold lookup: a new book every time (resolution through genai-prices, then cached)
    figures["cold_lookup_us"] = _per_call_us(
        lambda: PriceBook().lookup("gpt-4o", provider="openai", at=at), max(number // 100, 100)
    )
    worst = max(r[1] for r in rows)
    figures["worst_cached_lookup_us"] = worst
    figures["target_lookup_us"] = TARGET_LOOKUP_US
    figures["meets_target"] = worst <= TARGET_LOOKUP_US
    if not quiet:
        print(
            f"{'model':<20} {'lookup':>9} {'lookup@now':>11} {'cost()':>9} {'cost_nano':>10} {'calc_price':>11}"
        )
        for model, lookup, lookup_now, cost, nano, direct in rows:
            print(
                f"{model:<20} {lookup:>7.2f}µs {lookup_now:>9.2f}µs {cost:>7.2f}µs {nano:>8.2f}µs "
                f"{direct:>9.1f}µs"
            )
        print(
            f"price_event(): {figures['price_event_us']:.2f} µs; cold lookup: {figures['cold_lookup_us']:.1f} µs"
        )
        verdict = "OK" if figures["meets_target"] else "MISSED"
        print(f"cached lookup worst {worst:.2f} µs vs target {TARGET_LOOKUP_US} µs: {verdict}")
    return figures


if __name__ == "__main__":
    main()
