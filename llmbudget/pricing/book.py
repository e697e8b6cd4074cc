"""The price book: genai-prices' bundled data underneath, user overrides on top, dated.

How a price is chosen for one call (model, provider, time, usage):

1. a user override (`pricing:` in the config) matching the model by exact name
   (case-insensitive) or by regular expression (`re.search`), and the provider when the
   override names one; among those in force at the call's time (`effective_from` <= the
   call's UTC date, no date = always) the latest date wins, then an exact name over a
   regex, a provider-restricted entry over an open one, and the earlier entry in the file;
2. otherwise genai-prices' bundled book (never its network updater), with its dated
   and time-of-day prices evaluated at the call's time and its tiers on the call's
   whole input;
3. otherwise the call is `unpriced`: cost None, never $0.

Lookups are cached per (model, provider) together with the time span in which the
answer cannot change (between two consecutive price-change instants: start dates,
override dates, time-of-day windows), so a cached answer is never used for a time
where another price is in force. Costs are computed in integers of nano-USD, rounded
half-even, identical to `llmbudget.money.to_nano(genai_prices.calc_price(...).total_price)`.

The pieces: what a lookup answers (`llmbudget/pricing/results.py`), genai-prices' data
(`llmbudget/pricing/genai.py`), a price set compiled to integers (`llmbudget/pricing/compiled.py`)
and our provider names (`llmbudget/pricing/providers.py`). This module holds the overrides, the
cache of answers per time span and the book's public API.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from ..config import Config, PriceOverride
from ..events import UsageEvent
from .compiled import Compiled
from .genai import (
    REQUESTS_KEY,
    base_price,
    find_model,
    genai_prices_version,
    midnight_utc,
    model_boundaries,
    price_context,
    price_in_force,
    price_notes,
)
from .normalize import TokenUsage
from .providers import norm_provider
from .results import PriceInfo, PriceResult, PriceStatus

if TYPE_CHECKING:  # genai-prices: `Price` names its types, which load with its data on first use
    from .genai import Price

#: the four token prices every book entry may have (shown on their own rows by `llmbudget prices`)
_TOKEN_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")

_NEG_INF = -math.inf
_POS_INF = math.inf
#: distinct (model, provider) pairs kept; model names come from traffic, so the cache is bounded
_MAX_KEYS = 4096
#: time spans kept per pair (a re-price of history may visit a few)
_MAX_SPANS = 8


@dataclass(frozen=True, slots=True)
class _Span:
    """One cached answer and the time span [lo, hi) (unix seconds) in which it holds."""

    lo: float
    hi: float
    status: PriceStatus
    source: str
    compiled: Compiled | None
    info: PriceInfo | None
    reason: str = ""


# ---------------------------------------------------------------- overrides


@dataclass(frozen=True, slots=True)
class _Override:
    index: int
    model: str | None
    regex: re.Pattern[str] | None
    provider: str | None
    prices: dict[str, Decimal]
    effective_from: date | None
    start: float
    label: str

    @classmethod
    def build(cls, index: int, o: PriceOverride) -> _Override:
        prices = {"input_mtok": o.input_mtok, "output_mtok": o.output_mtok}
        if o.cache_read_mtok is not None:
            prices["cache_read_mtok"] = o.cache_read_mtok
        if o.cache_write_mtok is not None:
            prices["cache_write_mtok"] = o.cache_write_mtok
        if o.cache_write_1h_mtok is not None:
            prices["cache_write_1h_mtok"] = o.cache_write_1h_mtok
        label = o.model if o.model is not None else f"/{o.model_regex}/"
        if o.provider:
            label += f" (provider {o.provider})"
        if o.effective_from is not None:
            label += f" from {o.effective_from.isoformat()}"
        return cls(
            index=index,
            model=o.model.lower() if o.model is not None else None,
            regex=re.compile(o.model_regex) if o.model_regex is not None else None,
            provider=norm_provider(o.provider) if o.provider else None,
            prices=prices,
            effective_from=o.effective_from,
            start=_NEG_INF if o.effective_from is None else midnight_utc(o.effective_from),
            label=label,
        )

    def matches(self, model: str, provider: str | None) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        if self.model is not None:
            return self.model == model.lower()
        assert self.regex is not None
        return self.regex.search(model) is not None

    def rank(self) -> tuple[float, int, int, int]:
        """Higher wins: latest date, exact over regex, provider-restricted over open, earlier in the file."""
        return (self.start, self.model is not None, self.provider is not None, -self.index)


# ---------------------------------------------------------------- the book


class PriceBook:
    """Prices calls: user overrides first, then genai-prices' bundled book; unknown models are unpriced."""

    def __init__(
        self, overrides: Sequence[PriceOverride] = (), *, local_backends: Iterable[str] = ()
    ) -> None:
        self._overrides = tuple(_Override.build(i, o) for i, o in enumerate(overrides))
        self._local_backends = frozenset(local_backends)
        self._cache: dict[tuple[str, str | None, str | None], tuple[_Span, ...]] = {}
        self._lock = threading.Lock()
        self._version: str | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> PriceBook:
        """The book for a configuration: its `pricing:` overrides; backends marked `local: true` price at $0."""
        return cls(cfg.pricing, local_backends=[name for name, b in cfg.backends.items() if b.local])

    @property
    def package_source(self) -> str:
        if self._version is None:
            self._version = f"genai-prices {genai_prices_version()}"
        return self._version

    # ------------------------------------------------------------ public API

    def cost(
        self,
        model: str,
        usage: TokenUsage,
        *,
        provider: str | None = None,
        at: datetime | None = None,
        local: bool = False,
    ) -> PriceResult:
        """The cost of one call's whole usage at time `at` (default now); `local` calls cost $0."""
        if local:
            return PriceResult(Decimal(0), "local", "local backend")
        span = self._span(model, provider, at, usage.service_tier)
        if span.compiled is None:
            return PriceResult(None, "unpriced", span.reason)
        return PriceResult(_usd(span.compiled.nano(usage)), span.status, span.source)

    def cost_nano(
        self, model: str, usage: TokenUsage, *, provider: str | None = None, at: datetime | None = None
    ) -> tuple[int | None, PriceStatus]:
        """Like `cost` but returns (nano-USD or None, status): the hot path of the proxy and reprice."""
        span = self._span(model, provider, at, usage.service_tier)
        if span.compiled is None:
            return None, "unpriced"
        return span.compiled.nano(usage), span.status

    def price_event(self, event: UsageEvent, *, local: bool = False) -> UsageEvent:
        """A copy of `event` with `cost_usd` and `price_status` set from the price in force at its timestamp."""
        is_local = local or event.provider == "local" or event.backend in self._local_backends
        if is_local:
            return event.with_(cost_usd=Decimal(0), price_status="local")
        usage = TokenUsage.from_event(event)
        span = self._span(event.model, event.provider, event.timestamp, usage.service_tier)
        if span.compiled is None:
            return event.with_(cost_usd=None, price_status="unpriced")
        nano = span.compiled.nano(usage)
        return event.with_(cost_usd=_usd(nano), price_status=span.status)

    def lookup(
        self,
        model: str,
        *,
        provider: str | None = None,
        at: datetime | None = None,
        service_tier: str | None = None,
    ) -> PriceInfo | None:
        """The prices in force for `model` at `at` (default now, standard tier) and their source; None when unpriced."""
        return self._span(model, provider, at, service_tier).info

    def why_unpriced(
        self, model: str, *, provider: str | None = None, at: datetime | None = None
    ) -> str | None:
        """Why a model has no price (None when it has one)."""
        span = self._span(model, provider, at)
        return span.reason if span.compiled is None else None

    def clear_cache(self) -> None:
        """Forget cached lookups (after changing genai-prices' snapshot in-process)."""
        with self._lock:
            self._cache = {}

    # ------------------------------------------------------------ cache

    def _span(self, model: str, provider: str | None, at: datetime | None, tier: str | None = None) -> _Span:
        if at is None:
            ts = _now_ts()
        elif at.tzinfo is None:  # naive times are UTC by convention (as in genai-prices)
            ts = at.replace(tzinfo=UTC).timestamp()
        else:
            ts = at.timestamp()
        key = (model, provider, tier)
        spans = self._cache.get(key)
        if spans is not None:
            for s in spans:
                if s.lo <= ts < s.hi:
                    return s
        span = self._resolve(model, provider, ts, tier)
        with self._lock:
            cache = self._cache
            if len(cache) >= _MAX_KEYS and key not in cache:
                cache.clear()  # crude but bounded; the hot set refills in microseconds
            old = cache.get(key, ())
            cache[key] = (span, *old[: _MAX_SPANS - 1])
        return span

    def _resolve(self, model: str, provider: str | None, ts: float, tier: str | None = None) -> _Span:
        when = datetime.fromtimestamp(ts, UTC)
        ours = norm_provider(provider)
        overrides = [o for o in self._overrides if o.matches(model, ours)]
        boundaries: list[float] = [o.start for o in overrides if o.start != _NEG_INF]

        found, why = find_model(model, ours)
        if found is not None:
            boundaries.extend(model_boundaries(found[1], when, variants=tier is not None))
        lo = max((b for b in boundaries if b <= ts), default=_NEG_INF)
        hi = min((b for b in boundaries if b > ts), default=_POS_INF)
        next_change = None if hi == _POS_INF else datetime.fromtimestamp(hi, UTC)

        in_force = [o for o in overrides if o.start <= ts]
        if in_force:
            o = max(in_force, key=_Override.rank)
            source = f"override: {o.label}"
            own: dict[str, Decimal] = dict(o.prices)
            info = PriceInfo(
                model=model,
                provider=provider,
                price_provider=o.provider or ours,
                model_id=found[1].id if found else None,
                model_name=found[1].name if found else None,
                status="override",
                source=source,
                input_mtok=own.get("input_mtok"),
                output_mtok=own.get("output_mtok"),
                cache_read_mtok=own.get("cache_read_mtok"),
                cache_write_mtok=own.get("cache_write_mtok"),
                effective_from=o.effective_from,
                next_change=next_change,
                unit_prices={k: v for k, v in own.items() if k not in _TOKEN_KEYS},
            )
            return _Span(lo, hi, "override", source, Compiled(own), info)

        if found is None:
            return _Span(lo, hi, "unpriced", "", None, None, why)
        gp_provider, gp_model = found
        model_price, start = price_in_force(gp_model, when)
        context = price_context(gp_provider.id, tier)
        if context and any(gp_model is m for m in gp_provider.models):
            # the provider's own variant prices for the tier that served the call (genai-prices'
            # rule: not for a model borrowed from another provider's list)
            model_price = gp_model.get_prices(when, context)
        prices: dict[str, Price] = {
            k: v for k, v in vars(model_price).items() if v is not None and not k.startswith("_")
        }
        req = prices.get(REQUESTS_KEY)
        request_usd = req / 1000 if isinstance(req, Decimal) else None
        source = self.package_source
        info = PriceInfo(
            model=model,
            provider=provider,
            price_provider=gp_provider.id,
            model_id=gp_model.id,
            model_name=gp_model.name,
            status="priced",
            source=source,
            input_mtok=base_price(prices.get("input_mtok")),
            output_mtok=base_price(prices.get("output_mtok")),
            cache_read_mtok=base_price(prices.get("cache_read_mtok")),
            cache_write_mtok=base_price(prices.get("cache_write_mtok")),
            effective_from=start,
            tiers={
                k: tuple((int(t.start), t.price) for t in v.tiers)
                for k, v in prices.items()
                if not isinstance(v, Decimal)
            },
            request_usd=request_usd,
            notes=price_notes(gp_model, model_price),
            next_change=next_change,
            unit_prices={
                k: b
                for k, v in prices.items()
                if k not in _TOKEN_KEYS and k != REQUESTS_KEY and (b := base_price(v)) is not None
            },
            service_tier=tier if context else None,
        )
        return _Span(lo, hi, "priced", source, Compiled(prices), info)


def _usd(nano: int) -> Decimal:
    # same value and exponent as money.from_nano, without its division (this is the hot path)
    return Decimal(nano).scaleb(-9)


def _now_ts() -> float:
    return datetime.now(UTC).timestamp()


# ---------------------------------------------------------------- helpers for callers

_default_book: PriceBook | None = None


def default_book() -> PriceBook:
    """A PriceBook without overrides (genai-prices' prices only), shared by `estimate_cost`."""
    global _default_book
    if _default_book is None:
        _default_book = PriceBook()
    return _default_book


def context_window(model: str, provider: str | None = None) -> int | None:
    """The model's context window (tokens) from genai-prices' data, with our provider names; None when unknown."""
    found, _ = find_model(model, norm_provider(provider))
    if found is None:
        return None
    window = getattr(found[1], "context_window", None)
    return int(window) if window else None


def estimate_cost(
    model: str, input_tokens: int, output_tokens: int, *, provider: str | None = None
) -> Decimal | None:
    """The cost now of a call with these token counts at the package's list price; None when unknown."""
    usage = TokenUsage.of(input_tokens, 0, 0, output_tokens, 0)
    return default_book().cost(model, usage, provider=provider).cost_usd
