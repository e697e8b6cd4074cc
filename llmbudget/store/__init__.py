"""Ledger back-ends. `open_ledger(url)` picks one by URL scheme."""

from __future__ import annotations

from typing import Any

from .base import CostRow, Ledger, SessionRow, UnpricedModel
from .shutdown import flush_all, install_signal_handlers

__all__ = [
    "CostRow",
    "Ledger",
    "SessionRow",
    "UnpricedModel",
    "flush_all",
    "install_signal_handlers",
    "open_ledger",
]


def open_ledger(url: str | None = None, **options: Any) -> Ledger:
    """Open the ledger at `url` (`sqlite:///path`, a path, `postgresql://...`); None means the default SQLite file."""
    from ..config import default_db_url

    url = url or default_db_url()
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresLedger

        return PostgresLedger(url, **options)
    from .sqlite import SQLiteLedger

    return SQLiteLedger(url, **options)
