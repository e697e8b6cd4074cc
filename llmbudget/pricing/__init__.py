"""The price book: genai-prices underneath, user overrides (exact, regex, dated), unpriced state.

`normalize` turns each provider's usage report into one `TokenUsage`; `book` prices it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import book
from .normalize import (
    TokenUsage,
    anthropic_usage,
    gemini_usage,
    openai_chat_usage,
    openai_embeddings_usage,
    openai_responses_usage,
)

__all__ = [
    "PriceBook",
    "PriceInfo",
    "PriceResult",
    "TokenUsage",
    "anthropic_usage",
    "context_window",
    "estimate_cost",
    "gemini_usage",
    "openai_chat_usage",
    "openai_embeddings_usage",
    "openai_responses_usage",
    "provider_for",
]

if TYPE_CHECKING:
    from .book import PriceBook, PriceInfo, PriceResult, context_window, estimate_cost, provider_for

_BOOK = {"PriceBook", "PriceInfo", "PriceResult", "context_window", "estimate_cost", "provider_for"}


def __getattr__(name: str) -> Any:
    # the book imports genai-prices' data (~0.3 s); keep `import llmbudget.pricing` cheap for normalize users
    if name in _BOOK:
        value = getattr(book, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llmbudget.pricing' has no attribute {name!r}")
