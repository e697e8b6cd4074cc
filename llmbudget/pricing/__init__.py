"""The price book: genai-prices underneath, user overrides (exact, regex, dated), unpriced state.

`normalize` turns each provider's usage report into one `TokenUsage`; `book` prices it. Importing
this package stays cheap: genai-prices' data is loaded on the first lookup, not here.
"""

from __future__ import annotations

from .book import PriceBook, context_window, estimate_cost
from .normalize import (
    TokenUsage,
    anthropic_usage,
    gemini_usage,
    openai_chat_usage,
    openai_embeddings_usage,
    openai_responses_usage,
)
from .providers import provider_for
from .results import PriceInfo, PriceResult

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
