"""The configured application object: config, ledger, price book and the feature services built on them.

Everything that needs a dependency receives this (or the parts it needs); there is no other global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Config, load_config, resolve_db_url
from .store import Ledger, ledger_options, open_ledger


@dataclass
class Services:
    config: Config
    ledger: Ledger
    #: llmbudget.pricing.PriceBook
    prices: Any
    #: feature services attached by their modules (budget enforcer, quota store, notifications, ...)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls, config: Config | None = None, *, config_path: str | None = None, db_url: str | None = None
    ) -> Services:
        """Load config (unless given), open the ledger and build the price book."""
        from .pricing import PriceBook

        cfg = config if config is not None else load_config(config_path)
        ledger = open_ledger(resolve_db_url(db_url, cfg), **ledger_options(cfg))
        return cls(config=cfg, ledger=ledger, prices=PriceBook.from_config(cfg))

    def close(self) -> None:
        self.ledger.close()
