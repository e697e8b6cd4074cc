"""llmbudget: meter, budget and watch the quota of LLM calls.

The public Python API is imported lazily so `import llmbudget` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "UsageEvent": ("llmbudget.events", "UsageEvent"),
    "Ledger": ("llmbudget.store", "Ledger"),
    "PriceBook": ("llmbudget.pricing", "PriceBook"),
    "estimate_cost": ("llmbudget.pricing", "estimate_cost"),
    "Meter": ("llmbudget.meter", "Meter"),
    "wrap": ("llmbudget.capture.wrap", "wrap"),
    "BudgetExceeded": ("llmbudget.errors", "BudgetExceeded"),
    "BudgetUnavailable": ("llmbudget.errors", "BudgetUnavailable"),
    "LLMBudgetError": ("llmbudget.errors", "LLMBudgetError"),
}

__all__ = [  # noqa: RUF022 - grouped as in _EXPORTS
    "__version__",
    "UsageEvent",
    "Ledger",
    "PriceBook",
    "estimate_cost",
    "Meter",
    "wrap",
    "BudgetExceeded",
    "BudgetUnavailable",
    "LLMBudgetError",
]

if TYPE_CHECKING:  # __getattr__ below loads these on first use: `import llmbudget` stays cheap
    from .errors import BudgetExceeded, BudgetUnavailable, LLMBudgetError
    from .events import UsageEvent
    from .store import Ledger


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'llmbudget' has no attribute {name!r}") from None

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
