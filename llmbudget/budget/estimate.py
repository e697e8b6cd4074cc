"""A call's worst case before it is sent: input tokens as counted, output = max_tokens or the model's maximum.

genai-prices knows a model's context window but not its maximum output, so the maximum comes
from a short table of families (published limits), bounded by the context window left after
the input; anything else uses `budgets.default_max_output_tokens` (32,768 unless configured).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ..money import from_nano
from ..pricing import TokenUsage
from ..pricing.book import PriceBook

#: published maximum output tokens by model-name prefix (longest prefix wins)
MAX_OUTPUT_BY_PREFIX: dict[str, int] = {
    "claude-opus-4": 32_000,
    "claude-sonnet-4": 64_000,
    "claude-3-7-sonnet": 64_000,
    "claude-haiku-4": 64_000,
    "claude-3-5": 8_192,
    "claude-3": 4_096,
    "gpt-4o": 16_384,
    "gpt-4.1": 32_768,
    "gpt-4-turbo": 4_096,
    "gpt-4": 8_192,
    "gpt-3.5": 4_096,
    "gpt-5": 128_000,
    "o1": 100_000,
    "o3": 100_000,
    "o4": 100_000,
    "gemini-2.5": 65_536,
    "gemini-2.0": 8_192,
    "gemini-1.5": 8_192,
    "grok": 131_072,
    "deepseek": 8_192,
}

#: price a call: (model, provider, input_tokens, output_tokens, at[, service_tier]) -> Decimal USD,
#: None when unpriced; the tier argument is passed only when the request names one
PriceFn = Callable[..., Decimal | None]


@lru_cache(maxsize=2048)
def context_window(model: str, provider: str | None) -> int | None:
    """The model's context window from genai-prices' bundled data, None when unknown."""
    try:
        from genai_prices import data_snapshot  # heavy (see pricing.genai): on first use

        snap = data_snapshot.get_snapshot()
        for pid in (provider, None) if provider else (None,):
            try:
                _, m = snap.find_provider_model(model, None, pid, None)
            except LookupError:
                continue
            return int(m.context_window) if m.context_window else None
    except Exception:  # the price data itself unreadable: no bound
        return None
    return None


def max_output_tokens(model: str, provider: str | None, input_tokens: int, default: int) -> int:
    """The worst-case output of a call that sets no max_tokens."""
    name = model.lower().rsplit("/", 1)[-1]
    best = ""
    for prefix in MAX_OUTPUT_BY_PREFIX:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    limit = MAX_OUTPUT_BY_PREFIX[best] if best else default
    window = context_window(model, provider)
    if window is not None and window > input_tokens:
        limit = min(limit, window - input_tokens)
    return max(1, limit)


class BookPrice:
    """The price book as a `PriceFn`, with `nano()`: the same price in integer nano-USD, without a
    Decimal on the way (the admission's hot path wants nano-USD anyway)."""

    def __init__(self, book: PriceBook) -> None:
        self.book = book

    def _one(self, model: str, provider: str, usage: TokenUsage, at: datetime) -> int | None:
        # a provider we cannot match (a custom base URL) should not make a known model free to reserve:
        # retry by model name alone
        for prov in (provider, None) if provider else (None,):
            try:
                nano, _ = self.book.cost_nano(model, usage, provider=prov, at=at)
            except LookupError:
                continue
            if nano is not None:
                return nano
        return None

    def nano(
        self,
        model: str,
        provider: str,
        input_tokens: int,
        output_tokens: int,
        at: datetime,
        service_tier: str | None = None,
    ) -> int | None:
        tin, tout = max(0, int(input_tokens)), max(0, int(output_tokens))
        # two counts with no parts: nothing for `TokenUsage.of` to reconcile
        standard = self._one(model, provider, TokenUsage(input_tokens=tin, output_tokens=tout), at)
        if not service_tier or standard is None:
            return standard
        # the tier asked for (priority, fast) may cost more than the standard prices: reserve the dearer,
        # so a hard limit holds whichever tier serves the call
        tiered = self._one(
            model,
            provider,
            TokenUsage.of(input_tokens=input_tokens, output_tokens=output_tokens, service_tier=service_tier),
            at,
        )
        return standard if tiered is None else max(standard, tiered)

    def __call__(self, *args: Any, **kwargs: Any) -> Decimal | None:
        """The same price in USD (`PriceFn`): `nano()`'s arguments."""
        nano = self.nano(*args, **kwargs)
        return None if nano is None else from_nano(nano)


def price_fn_from_book(book: PriceBook) -> PriceFn:
    """Adapt the price book (`PriceBook.cost_nano(model, TokenUsage, provider=, at=)`) to a PriceFn."""
    return BookPrice(book)
