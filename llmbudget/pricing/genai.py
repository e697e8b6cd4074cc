"""genai-prices' bundled data as the price book reads it: models, prices in force, change instants.

Only the bundled snapshot is read, never the network updater. The package is imported on first
use: it builds ~2,000 model records (~0.3 s), so `import llmbudget.pricing` stays cheap.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from ..events import UNIT_KEYS
from .providers import PROVIDER_IDS

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import (
        ModelInfo,
        ModelPrice,
        Provider,
        StartDateConstraint,
        TieredPrices,
        TimeOfDateConstraint,
    )
    from genai_prices.units import UnitRegistry

    #: a price as genai-prices holds it: one rate, or a base rate with input-size tiers
    Price = Decimal | TieredPrices

log = logging.getLogger(__name__)

#: the price key of a per-request fee (USD per 1,000 requests)
REQUESTS_KEY = "requests_kcount"
#: genai-prices usage keys -> TokenUsage attributes; other metered units come from `TokenUsage.units`
USAGE_ATTRS = {
    "input_tokens": "input_tokens",
    "cache_read_tokens": "cached_input_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "cache_write_1h_tokens": "cache_write_1h_tokens",
    "output_tokens": "output_tokens",
    "output_reasoning_tokens": "reasoning_tokens",
}


def _snapshot() -> DataSnapshot:
    # imported on first use: it builds ~2,000 model records (~0.3 s); never start UpdatePrices
    import genai_prices

    return genai_prices.data_snapshot.get_snapshot()


def genai_prices_version() -> str:
    """The installed genai-prices version, as shown in price sources."""
    # heavy, as in _snapshot(): on first use
    import genai_prices

    return str(genai_prices.__version__)


def registry() -> UnitRegistry:
    """genai-prices' units: which usage key each price key charges, per how many, its dimensions."""
    from genai_prices.units import _get_registry  # heavy, as in _snapshot(): on first use

    return _get_registry()


def base_price(p: Price | None) -> Decimal | None:
    """A price's base rate (below every tier)."""
    if p is None or isinstance(p, Decimal):
        return p
    return p.base


def find_model(model: str, ours: str | None) -> tuple[tuple[Provider, ModelInfo] | None, str]:
    """genai-prices' (provider, model) for our model and provider name, else (None, why)."""
    if ours == "local":
        return None, f"no price for model {model!r}: provider 'local' has no price list"
    snapshot = _snapshot()
    gp_id: str | None = None
    if ours is not None:
        gp_id = PROVIDER_IDS.get(ours, ours)
        try:
            snapshot.find_provider(None, gp_id, None)
        except LookupError:
            gp_id = None  # a provider genai-prices does not know: find the provider by model instead
    try:
        return snapshot.find_provider_model(model, None, gp_id, None), ""
    except LookupError:
        where = f" from provider {gp_id!r}" if gp_id else ""
        return None, f"no price for model {model!r}{where} in genai-prices {genai_prices_version()}"
    except Exception as e:  # a malformed name must never crash metering
        log.warning("price lookup failed model=%r provider=%r error=%s", model, ours, e)
        return None, f"no price for model {model!r}: {e}"


def midnight_utc(d: date) -> float:
    """The unix instant at which UTC date `d` starts."""
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def model_boundaries(gp_model: ModelInfo, when: datetime, variants: bool = False) -> list[float]:
    """Instants near `when` at which this model's package price can change (a tier's variants too)."""
    prices = gp_model.prices
    constraints: list[StartDateConstraint | TimeOfDateConstraint | None] = (
        [v.constraint for v in gp_model.price_variants or ()] if variants else []
    )
    if isinstance(prices, list):
        constraints.extend(cp.constraint for cp in prices)
    out: list[float] = []
    day = when.date()
    for c in constraints:
        if c is None:
            continue
        if hasattr(c, "start_date"):
            out.append(midnight_utc(c.start_date))
        elif hasattr(c, "start_time"):
            for t in (c.start_time, c.end_time):
                tu = _utc_time(t)
                for d in (day - timedelta(days=1), day, day + timedelta(days=1)):
                    out.append(datetime.combine(d, tu).timestamp())
    return out


def _utc_time(t: time) -> time:
    if t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    return datetime.combine(date(1970, 1, 1), t).astimezone(UTC).timetz()


def price_in_force(gp_model: ModelInfo, when: datetime) -> tuple[ModelPrice, date | None]:
    """genai-prices' ModelPrice at `when` (its own rule: the last active conditional price wins) and its start date."""
    prices = gp_model.prices
    if not isinstance(prices, list):
        return prices, None
    chosen = prices[0]
    for cp in reversed(prices):
        if cp.constraint is None or cp.constraint.active(when):
            chosen = cp
            break
    start: date | None = getattr(chosen.constraint, "start_date", None)
    return chosen.prices, start


def price_context(gp_provider_id: str, tier: str | None) -> dict[str, str] | None:
    """genai-prices' price context for the tier a provider reported (None: the standard prices).

    OpenAI (and Google) variants are keyed by `service_tier`; Anthropic's fast mode by `speed`, and
    batch results by `processing`.
    """
    if not tier:
        return None
    if tier == "batch":
        return {"processing": "batch"}
    if gp_provider_id == "anthropic" and tier == "fast":
        return {"speed": "fast"}
    return {"service_tier": tier}


def _metered_price_keys() -> frozenset[str]:
    """Price keys of the units llmbudget reads from responses (and so charges)."""
    reg = registry()
    keys = {REQUESTS_KEY}
    for usage_key in (*USAGE_ATTRS, *UNIT_KEYS):
        unit = reg.units.get(usage_key)
        if unit is not None:
            keys.add(unit.price_key)
    return frozenset(keys)


def price_notes(gp_model: ModelInfo, model_price: ModelPrice) -> tuple[str, ...]:
    """Human notes on a model's prices: time-of-day windows, prices of units llmbudget does not meter."""
    out: list[str] = []
    prices = gp_model.prices
    if isinstance(prices, list):
        for cp in prices:
            c = cp.constraint
            if c is None or hasattr(c, "start_date"):
                continue  # always in force, or from a date on
            if hasattr(c, "start_time"):
                s, e = _utc_time(c.start_time), _utc_time(c.end_time)
                out.append(f"time-of-day price: a different price applies {s:%H:%M}-{e:%H:%M} UTC")
    metered = _metered_price_keys()
    others = sorted(
        k
        for k, v in vars(model_price).items()
        if v is not None and not k.startswith("_") and k not in metered
    )
    if others:
        out.append("also priced, not reported by any response llmbudget reads: " + ", ".join(others))
    return tuple(out)
