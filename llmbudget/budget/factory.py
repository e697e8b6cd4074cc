"""Building the budget enforcer and its gate from a `Config`.

`install(services)` puts a `BudgetGate` into `services.gate` (the proxy and the SDK wrappers then
ask it before every call); `gate_from_config()` is the same gate for `llmbudget.wrap(client,
gate=...)`; `reconcile_after_write` brings the counters back in line after a write from outside
the gate (import, reprice).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from ..admission import Gate
from ..alerts import Notifier
from ..config import Config, get_zone, load_config, resolve_db_url
from ..events import utcnow
from ..pricing.book import PriceBook
from ..store import Ledger, open_ledger
from .config import AlertsConfig, BudgetsConfig
from .counters import open_counters
from .enforcer import BudgetEnforcer
from .estimate import PriceFn, price_fn_from_book
from .gate import BudgetGate
from .rules import budgets_from_config
from .watch import UtilizationWatcher

__all__ = ["BudgetHost", "build_enforcer", "gate_from_config", "install", "reconcile_after_write"]


class BudgetHost(Protocol):
    """What `install` reads and fills in (`llmbudget.services.Services`, a layer above)."""

    @property
    def config(self) -> Config: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def prices(self) -> PriceBook: ...

    enforcer: BudgetEnforcer | None
    gate: Gate | None
    utilization_watcher: UtilizationWatcher | None


def build_enforcer(
    cfg: Config,
    db_url: str,
    *,
    state: Ledger | None = None,
    prices: PriceBook | None = None,
    price_fn: PriceFn | None = None,
    clock: Callable[[], datetime] | None = None,
    redis_prefix: str | None = None,
) -> BudgetEnforcer:
    """An enforcer for a Config: counters in Redis (`budgets.redis_url`) or the ledger's database."""
    b = cfg.budgets if cfg.budgets is not None else BudgetsConfig()
    alerts = cfg.alerts
    if price_fn is None:
        price_fn = price_fn_from_book(prices if prices is not None else PriceBook.from_config(cfg))
    notifier = Notifier(
        state, alerts.webhooks if alerts else [], keep=alerts.keep_notifications if alerts else 500
    )
    return BudgetEnforcer(
        budgets_from_config(b),
        open_counters(
            db_url, b.redis_url, redis_prefix=redis_prefix or b.redis_prefix, pool_size=cfg.storage.pool_size
        ),
        tz=get_zone(b.timezone or cfg.timezone),
        price=price_fn,
        fallback=b.fallback,
        fallback_model=b.fallback_model,
        ttl_s=b.reservation_ttl_s,
        default_max_output=b.default_max_output_tokens,
        input_factor=b.input_token_factor,
        notifier=notifier,
        state=state,
        on_error=b.on_error,
        clock=clock if clock is not None else utcnow,
    )


def install(services: BudgetHost) -> Gate:
    """Attach the budget gate to `services.gate` (the enforcer to `services.enforcer`).

    The gate is installed whether or not budgets exist: a paused agent is refused either way (with
    no budgets the gate only reads the pause list, cached for a second). With budgets it also
    reconciles the counters with the ledger every `budgets.reconcile_interval_s`. Starts the
    utilization watcher (committed budgets, quota readings).
    """
    cfg = services.config
    has_budgets = cfg.budgets is not None and cfg.budgets.has_budgets()
    alerts = cfg.alerts or AlertsConfig()
    watch = alerts.utilization.enabled and (bool(cfg.providers) or has_budgets)
    enforcer = services.enforcer
    if enforcer is None:
        db_url = getattr(services.ledger, "url", None) or resolve_db_url(None, cfg)
        enforcer = build_enforcer(cfg, db_url, state=services.ledger, prices=services.prices)
        services.enforcer = enforcer
        if watch and (cfg.providers or any(b.committed for b in enforcer.budgets)):
            services.utilization_watcher = UtilizationWatcher(
                enforcer, services.ledger, alerts.utilization
            ).start()
        if cfg.budgets is not None and has_budgets:
            enforcer.start_reconciler(cfg.budgets.reconcile_interval_s)
    gate = services.gate
    if gate is None:
        enforcer.batch = True  # the proxy writes settlements in batches
        wait_s = cfg.budgets.inflight_wait_s if cfg.budgets is not None else 0.0
        gate = services.gate = BudgetGate(enforcer, wait_s=wait_s)
    return gate


def gate_from_config(config_path: str | None = None, db_url: str | None = None) -> BudgetGate:
    """A gate for `llmbudget.wrap(client, gate=...)` from the configured file.

    Without budgets the gate still refuses paused agents. With budgets it reconciles the counters
    with the ledger in a background thread, as `llmbudget serve` does.
    """
    cfg = load_config(config_path)
    url = resolve_db_url(db_url, cfg)
    enforcer = build_enforcer(cfg, url, state=open_ledger(url))
    if cfg.budgets is not None:
        enforcer.start_reconciler(cfg.budgets.reconcile_interval_s)
    return BudgetGate(enforcer, wait_s=cfg.budgets.inflight_wait_s if cfg.budgets is not None else 0.0)


def reconcile_after_write(cfg: Config, ledger: Ledger) -> str | None:
    """Reconcile the budget counters after a write from outside the gate (import, reprice).

    Returns a warning to print when the counters could not be reached (the write itself stands;
    `llmbudget serve` reconciles again within `budgets.reconcile_interval_s`).
    """
    if cfg.budgets is None or not cfg.budgets.has_budgets():
        return None
    try:
        ledger.flush()
        enforcer = build_enforcer(cfg, ledger.url, state=ledger, price_fn=lambda *a: None)
        try:
            enforcer.reconcile()
        finally:
            enforcer.close()
    except Exception as e:
        return f"budget counters not reconciled ({type(e).__name__}: {e}); `llmbudget budget` will"
    return None
