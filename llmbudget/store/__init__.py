"""Ledger back-ends. `open_ledger(url)` picks one by URL scheme."""

from __future__ import annotations

from typing import Any

from ..config import Config, default_db_url, mask_url
from ..errors import StorageError
from .base import CostRow, Ledger, SessionRow, UnpricedModel
from .shutdown import flush_all, install_signal_handlers

__all__ = [
    "CostRow",
    "Ledger",
    "SessionRow",
    "UnpricedModel",
    "flush_all",
    "install_signal_handlers",
    "ledger_options",
    "open_ledger",
]


def ledger_options(cfg: Config, *, instance: str = "") -> dict[str, Any]:
    """The `open_ledger` keyword options the config's `storage` section sets (audit log, batching, durability).

    `instance` names one of several processes on one host (`serve --workers`): each keeps its own
    audit log and outage spool (`audit-w1.jsonl`, `spool-<db>-w1.jsonl`).
    """
    st = cfg.storage
    return {
        "audit_log": st.audit_log,
        "audit": st.audit,
        "batch_size": st.batch_size,
        "flush_interval_s": st.flush_interval_s,
        "durability": st.durability,
        "pool_size": st.pool_size,
        "instance": instance,
    }


def open_ledger(url: str | None = None, **options: Any) -> Ledger:
    """Open the ledger at `url` (`sqlite:///path`, a path, `postgresql://...`); None means the default SQLite file."""
    url = url or default_db_url()
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresLedger  # optional extra (psycopg): imported when a URL asks for it

        return PostgresLedger(url, **options)
    scheme = url.split("://", 1)[0] if "://" in url else None
    if scheme is not None and scheme != "sqlite":
        hint = " (Redis holds budget counters: set budgets.redis_url)" if scheme.startswith("redis") else ""
        raise StorageError(
            f"unsupported database URL scheme {scheme!r} in {mask_url(url)}; the ledger takes "
            f"sqlite:///path/to/file.db, a file path, or postgresql://user@host/db{hint}"
        )
    # start-up: the CLI imports this package, `llmbudget --help` must not load a back-end
    from .sqlite import SQLiteLedger

    return SQLiteLedger(url, **options)
