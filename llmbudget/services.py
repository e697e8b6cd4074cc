"""The configured application object: config, ledger, price book and the feature services built on them.

Everything that needs a dependency receives this (or the parts it needs); there is no other global state.
Each part has its own typed field. Parts owned by a layer above this one (the access policy, the
metrics, the OTLP exporter, the report pool) are typed by the little they must offer here, so this
module imports nothing from the edges.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from .admission import Gate
from .budget.enforcer import BudgetEnforcer
from .budget.thresholds import ThresholdWatch
from .budget.watch import UtilizationWatcher
from .config import Config, load_config, resolve_db_url
from .events import UsageEvent
from .fanout import LiveHub
from .keys import KeyRing
from .pricing.book import PriceBook
from .quota.probe import ProbeSession
from .store import Ledger, ledger_options, open_ledger

#: serves a call on a backend of another wire protocol: (proxy, request, backend, send) -> the event
Translator = Callable[..., Awaitable[UsageEvent | None]]


class AccessRules(Protocol):
    """What the proxy asks of the access policy (`llmbudget.access.policy.AccessPolicy`)."""

    @property
    def relay_open(self) -> bool: ...

    def is_admin_token(self, header_value: str) -> bool: ...


class OverheadMeter(Protocol):
    """What the proxy feeds the metrics with (`llmbudget.web.metrics.Metrics`)."""

    def observe_overhead(self, value: float) -> None: ...


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class Services:
    config: Config
    ledger: Ledger
    prices: PriceBook
    #: the budget enforcer (pauses and notices work without budgets too); None until built
    enforcer: BudgetEnforcer | None = None
    #: admits, settles and releases each call; None when nothing gates calls
    gate: Gate | None = None
    #: (call's protocol, backend's protocol) -> translator, for cross-protocol fallback
    translators: dict[tuple[str, str], Translator] = field(default_factory=dict)
    access: AccessRules | None = None
    keyring: KeyRing | None = None
    #: the live fan-out fed by the ledger's record path and the notifier
    live: LiveHub | None = None
    threshold_watch: ThresholdWatch | None = None
    utilization_watcher: UtilizationWatcher | None = None
    metrics: OverheadMeter | None = None
    otel: Closable | None = None
    #: the dashboard's report pool (`llmbudget.web.reportpool.ReportPool`)
    report_pool: object | None = None
    #: the server's one HTTP session for quota probes (`/api/quota/summary`), closed by the app's lifespan
    probe_session: ProbeSession | None = None

    @classmethod
    def create(
        cls,
        config: Config | None = None,
        *,
        config_path: str | None = None,
        db_url: str | None = None,
        instance: str = "",
    ) -> Services:
        """Load config (unless given), open the ledger and build the price book."""
        cfg = config if config is not None else load_config(config_path)
        ledger = open_ledger(resolve_db_url(db_url, cfg), **ledger_options(cfg, instance=instance))
        return cls(config=cfg, ledger=ledger, prices=PriceBook.from_config(cfg))

    def close(self) -> None:
        self.ledger.close()


__all__ = ["AccessRules", "Closable", "OverheadMeter", "Services", "Translator"]
