"""Budgets that hold: config, windows, atomic reservations, enforcement, alerts.

The enforcer and its gate are built in `llmbudget.budget.factory` (`install`, `gate_from_config`,
`build_enforcer`, `reconcile_after_write`). This package imports nothing: `llmbudget.config`
imports `llmbudget.budget.config`, which runs this file first. The factories' names stay
reachable from here (`from llmbudget.budget import gate_from_config`), resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # __getattr__ below resolves these on first use: the package imports nothing
    from .factory import build_enforcer, gate_from_config, install, reconcile_after_write

__all__ = ["build_enforcer", "gate_from_config", "install", "reconcile_after_write"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'llmbudget.budget' has no attribute {name!r}")
    value = getattr(importlib.import_module("llmbudget.budget.factory"), name)
    globals()[name] = value
    return value
