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
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ..events import UNIT_KEYS
from ..money import to_nano
from .normalize import TokenUsage

if TYPE_CHECKING:
    from ..config import Config, PriceOverride
    from ..events import UsageEvent

log = logging.getLogger(__name__)

PriceStatus = Literal["priced", "override", "unpriced", "local"]

#: the four token prices every book entry may have (shown on their own rows by `llmbudget prices`)
_TOKEN_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")
_REQUESTS_KEY = "requests_kcount"
#: genai-prices usage keys -> TokenUsage attributes; other metered units come from `TokenUsage.units`
_USAGE_ATTRS = {
    "input_tokens": "input_tokens",
    "cache_read_tokens": "cached_input_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "cache_write_1h_tokens": "cache_write_1h_tokens",
    "output_tokens": "output_tokens",
    "output_reasoning_tokens": "reasoning_tokens",
}
_NEG_INF = -math.inf
_POS_INF = math.inf
#: distinct (model, provider) pairs kept; model names come from traffic, so the cache is bounded
_MAX_KEYS = 4096
#: time spans kept per pair (a re-price of history may visit a few)
_MAX_SPANS = 8

#: our provider names (events, config) -> genai-prices provider ids
PROVIDER_IDS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "vertex": "google",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "grok": "x-ai",
    "deepseek": "deepseek",
    "openrouter": "openrouter",
    "mistral": "mistral",
    "groq": "groq",
    "together": "together",
    "fireworks": "fireworks",
    "cerebras": "cerebras",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "azure": "azure",
    "bedrock": "aws",
    "aws": "aws",
    "moonshot": "moonshotai",
    "moonshotai": "moonshotai",
    "zai": "zai",
    "huggingface": "huggingface",
}

#: providers that never price anything (their calls are `local` or `unpriced` by name alone)
_NO_PROVIDER = frozenset({"", "unknown", "local", "none"})


def _genai() -> Any:
    # imported on first use: it builds ~2,000 model records (~0.3 s); never start UpdatePrices
    import genai_prices

    return genai_prices


def genai_prices_version() -> str:
    """The installed genai-prices version, as shown in price sources."""
    return str(_genai().__version__)


# ---------------------------------------------------------------- public results


@dataclass(frozen=True, slots=True)
class PriceResult:
    """The cost of one call and where its price came from."""

    #: None when unpriced (never reported as $0)
    cost_usd: Decimal | None
    status: PriceStatus
    #: "override: <match>", "genai-prices <version>", "local backend", or why it is unpriced
    source: str

    @property
    def cost_nano(self) -> int | None:
        """The cost in integer nano-USD (the storage unit), None when unpriced."""
        return None if self.cost_usd is None else to_nano(self.cost_usd)


@dataclass(frozen=True, slots=True)
class PriceInfo:
    """The per-million-token prices in force for a model at one time."""

    model: str
    #: our provider name as asked (None: found by model)
    provider: str | None
    #: the price's own provider id (genai-prices id, or the override's provider)
    price_provider: str | None
    #: genai-prices' model id and display name (None for an override that the book does not know)
    model_id: str | None
    model_name: str | None
    status: PriceStatus
    source: str
    input_mtok: Decimal | None
    output_mtok: Decimal | None
    #: None: cached reads are billed at the input price
    cache_read_mtok: Decimal | None
    #: None: cache writes are billed at the input price
    cache_write_mtok: Decimal | None
    #: the date this price took effect (None: no dated change known)
    effective_from: date | None
    #: price key -> ((input tokens above which it applies, price per million), ...); the whole call pays the tier rate
    tiers: dict[str, tuple[tuple[int, Decimal], ...]] = field(default_factory=dict)
    #: a fixed price per request in USD, when the model has one
    request_usd: Decimal | None = None
    #: human notes: time-of-day windows, prices for units llmbudget does not meter
    notes: tuple[str, ...] = ()
    #: prices of the other units the book knows for this model (genai-prices price key -> base price):
    #: `cache_write_1h_mtok`, `input_audio_mtok`, `web_searches_kcount` (USD per 1,000), ...
    unit_prices: dict[str, Decimal] = field(default_factory=dict)
    #: the service tier these prices are for (None: the standard prices)
    service_tier: str | None = None
    #: the next instant (UTC) at which a known price for this model changes (dated change, override, time of day)
    next_change: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: prices as decimal strings (exact)."""

        def s(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "model": self.model,
            "provider": self.provider,
            "price_provider": self.price_provider,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "status": self.status,
            "source": self.source,
            "input_mtok": s(self.input_mtok),
            "output_mtok": s(self.output_mtok),
            "cache_read_mtok": s(self.cache_read_mtok),
            "cache_write_mtok": s(self.cache_write_mtok),
            "effective_from": None if self.effective_from is None else self.effective_from.isoformat(),
            "tiers": {
                k: [{"above_input_tokens": a, "price_mtok": str(p)} for a, p in v]
                for k, v in self.tiers.items()
            },
            "request_usd": s(self.request_usd),
            "unit_prices": {k: str(v) for k, v in self.unit_prices.items()},
            "service_tier": self.service_tier,
            "notes": list(self.notes),
            "next_change": None if self.next_change is None else self.next_change.isoformat(),
        }


# ---------------------------------------------------------------- compiled prices


def _scale_of(values: Iterable[Decimal]) -> int:
    """Decimal places needed to write every price as an integer."""
    k = 0
    for v in values:
        exp = v.as_tuple().exponent
        if isinstance(exp, int) and -exp > k:
            k = -exp
    return k


def _as_int(v: Decimal, k: int) -> int:
    return int(v.scaleb(k))


@dataclass(frozen=True, slots=True)
class _Rate:
    """One token price in integer units of 10^-k USD per million tokens, with its tiers."""

    base: int
    #: ((threshold, price), ...) highest threshold first; the whole call pays the first one its input exceeds
    tiers: tuple[tuple[int, int], ...] = ()

    def at(self, total_input: int) -> int:
        for start, price in self.tiers:
            if total_input > start:
                return price
        return self.base


def _registry() -> Any:
    from genai_prices.units import _get_registry  # heavy, as in _genai(): on first use

    return _get_registry()


class _Compiled:
    """A price set reduced to integer arithmetic over genai-prices' units.

    Every priced unit (token kinds, TTL-split cache writes, audio/image/video tokens, web searches,
    a per-request fee) pays its own price on its own count; a unit's count excludes the counts of
    the more specific units priced beside it (genai-prices' leaf decomposition: 1-hour cache
    writes leave the 5-minute rate, audio tokens leave the text input rate). The result equals
    `to_nano(genai_prices.calc_price(...).total_price)` for the same usage, rounded half-even.
    """

    __slots__ = ("basic", "div", "entries", "mul", "request", "units_needed")
    div: int
    mul: int
    request: int
    units_needed: bool
    #: (input, cache read, cache write, output rates, token multiplier) for a usage with no other units,
    #: None when the model prices reasoning apart (then every call takes the general path)
    basic: tuple[_Rate | None, _Rate | None, _Rate | None, _Rate | None, int] | None
    #: (TokenUsage attribute or None for a `units` key, usage key, descendant indexes, rate, multiplier)
    entries: tuple[tuple[str | None, str, tuple[int, ...], _Rate, int], ...]

    def __init__(self, prices: dict[str, Any]) -> None:
        reg = _registry()
        priced: list[tuple[Any, Any]] = []
        for key, p in prices.items():
            if p is None:
                continue
            try:
                priced.append((reg.unit_for_price_key(key), p))
            except KeyError:
                continue  # a price key this genai-prices does not define: it cannot apply
        decimals: list[Decimal] = []
        for _, p in priced:
            if isinstance(p, Decimal):
                decimals.append(p)
            else:  # TieredPrices
                decimals.append(p.base)
                decimals.extend(t.price for t in p.tiers)
        k = _scale_of(decimals)
        lcm = 1
        for unit, _ in priced:
            lcm = math.lcm(lcm, int(unit.per))

        def rate(p: Any) -> _Rate:
            if isinstance(p, Decimal):
                return _Rate(_as_int(p, k))
            tiers = tuple(
                (int(t.start), _as_int(t.price, k)) for t in sorted(p.tiers, key=lambda t: -t.start)
            )
            return _Rate(_as_int(p.base, k), tiers)

        self.request = 0
        counted = []
        for unit, p in priced:
            if unit.usage_key == "requests":  # one request per call
                self.request = rate(p).base * (lcm // int(unit.per))
            else:
                counted.append((unit, p))
        # most specific first, so every unit's descendants have their leaf counts before it
        counted.sort(key=lambda up: (-len(up[0].dimensions), up[0].usage_key))
        entries = []
        for i, (unit, p) in enumerate(counted):
            desc = tuple(
                j
                for j, (other, _) in enumerate(counted)
                if j != i and unit.dimensions.items() <= other.dimensions.items()
            )
            entries.append(
                (_USAGE_ATTRS.get(unit.usage_key), unit.usage_key, desc, rate(p), lcm // int(unit.per))
            )
        self.entries = tuple(entries)
        self.units_needed = any(e[0] is None for e in entries)
        by_key = {e[1]: e[3] for e in entries}
        self.basic = (
            None
            if "output_reasoning_tokens" in by_key
            else (
                by_key.get("input_tokens"),
                by_key.get("cache_read_tokens"),
                by_key.get("cache_write_tokens"),
                by_key.get("output_tokens"),
                lcm // 1_000_000 if lcm % 1_000_000 == 0 else 0,
            )
        )
        if self.basic is not None and self.basic[4] == 0:
            self.basic = None
        # numerator N is USD * 10^k * lcm; nano = N * 10^9 / (10^k * lcm), reduced
        num, den = 10**9, 10**k * lcm
        g = math.gcd(num, den)
        self.mul, self.div = num // g, den // g

    def nano(self, u: TokenUsage) -> int:
        """Cost in nano-USD, rounded half-even, of one call's whole usage."""
        total_in = u.input_tokens
        n: int = self.request
        basic = self.basic
        if basic is not None and not u.units and not u.cache_write_1h_tokens:
            # the common case, the same leaves in closed form: every other unit counts zero
            rin, rread, rwrite, rout, m = basic
            plain = total_in
            tok = 0
            if rread is not None:
                plain -= u.cached_input_tokens
                tok += rread.at(total_in) * u.cached_input_tokens
            if rwrite is not None:
                plain -= u.cache_write_tokens
                tok += rwrite.at(total_in) * u.cache_write_tokens
            if rin is not None:
                tok += rin.at(total_in) * plain
            if rout is not None:
                tok += rout.at(total_in) * u.output_tokens
            return self._round(n + tok * m)
        units = dict(u.units) if self.units_needed and u.units else {}
        leaves: list[int] = []
        append = leaves.append
        for attr, key, desc, rate, mult in self.entries:
            v: int = getattr(u, attr) if attr is not None else units.get(key, 0)
            for j in desc:
                v -= leaves[j]
            if v > 0:
                append(v)
                n += (rate.at(total_in) if rate.tiers else rate.base) * v * mult
            else:  # nothing, or inconsistent parts from a provider: never a negative count
                append(0)
        return self._round(n)

    def _round(self, n: int) -> int:
        """Numerator units to nano-USD, rounded half-even."""
        n *= self.mul
        if self.div == 1:
            return n
        q, r = divmod(n, self.div)
        twice = 2 * r
        if twice > self.div or (twice == self.div and q & 1):
            q += 1
        return q


@dataclass(frozen=True, slots=True)
class _Span:
    """One cached answer and the time span [lo, hi) (unix seconds) in which it holds."""

    lo: float
    hi: float
    status: PriceStatus
    source: str
    compiled: _Compiled | None
    info: PriceInfo | None
    reason: str = ""


# ---------------------------------------------------------------- overrides


def _midnight_utc(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


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
            provider=_norm_provider(o.provider) if o.provider else None,
            prices=prices,
            effective_from=o.effective_from,
            start=_NEG_INF if o.effective_from is None else _midnight_utc(o.effective_from),
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


def _norm_provider(provider: str | None) -> str | None:
    """Our provider name, lower-cased and with genai-prices' spellings folded to ours (x-ai -> xai)."""
    if provider is None:
        return None
    p = provider.strip().lower()
    if p in _NO_PROVIDER:
        return None if p != "local" else "local"
    return {
        "x-ai": "xai",
        "gemini": "google",
        "vertex": "google",
        "bedrock": "aws",
        "moonshotai": "moonshot",
    }.get(p, p)


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
        ours = _norm_provider(provider)
        overrides = [o for o in self._overrides if o.matches(model, ours)]
        boundaries: list[float] = [o.start for o in overrides if o.start != _NEG_INF]

        found, why = _find_model(model, ours)
        if found is not None:
            boundaries.extend(_model_boundaries(found[1], when, variants=tier is not None))
        lo = max((b for b in boundaries if b <= ts), default=_NEG_INF)
        hi = min((b for b in boundaries if b > ts), default=_POS_INF)
        next_change = None if hi == _POS_INF else datetime.fromtimestamp(hi, UTC)

        in_force = [o for o in overrides if o.start <= ts]
        if in_force:
            o = max(in_force, key=_Override.rank)
            source = f"override: {o.label}"
            prices: dict[str, Any] = dict(o.prices)
            info = PriceInfo(
                model=model,
                provider=provider,
                price_provider=o.provider or ours,
                model_id=found[1].id if found else None,
                model_name=found[1].name if found else None,
                status="override",
                source=source,
                input_mtok=prices.get("input_mtok"),
                output_mtok=prices.get("output_mtok"),
                cache_read_mtok=prices.get("cache_read_mtok"),
                cache_write_mtok=prices.get("cache_write_mtok"),
                effective_from=o.effective_from,
                next_change=next_change,
                unit_prices={k: v for k, v in prices.items() if k not in _TOKEN_KEYS},
            )
            return _Span(lo, hi, "override", source, _Compiled(prices), info)

        if found is None:
            return _Span(lo, hi, "unpriced", "", None, None, why)
        gp_provider, gp_model = found
        model_price, start = _price_in_force(gp_model, when)
        context = _price_context(gp_provider.id, tier)
        if context and any(gp_model is m for m in gp_provider.models):
            # the provider's own variant prices for the tier that served the call (genai-prices'
            # rule: not for a model borrowed from another provider's list)
            model_price = gp_model.get_prices(when, context)
        prices = {k: v for k, v in vars(model_price).items() if v is not None and not k.startswith("_")}
        req = prices.get(_REQUESTS_KEY)
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
            input_mtok=_base(prices.get("input_mtok")),
            output_mtok=_base(prices.get("output_mtok")),
            cache_read_mtok=_base(prices.get("cache_read_mtok")),
            cache_write_mtok=_base(prices.get("cache_write_mtok")),
            effective_from=start,
            tiers={
                k: tuple((int(t.start), t.price) for t in v.tiers)
                for k, v in prices.items()
                if not isinstance(v, Decimal)
            },
            request_usd=request_usd,
            notes=_notes(gp_model, model_price),
            next_change=next_change,
            unit_prices={
                k: b
                for k, v in prices.items()
                if k not in _TOKEN_KEYS and k != _REQUESTS_KEY and (b := _base(v)) is not None
            },
            service_tier=tier if context else None,
        )
        return _Span(lo, hi, "priced", source, _Compiled(prices), info)


def _usd(nano: int) -> Decimal:
    # same value and exponent as money.from_nano, without its division (this is the hot path)
    return Decimal(nano).scaleb(-9)


def _now_ts() -> float:
    return datetime.now(UTC).timestamp()


def _base(p: Any) -> Decimal | None:
    if p is None or isinstance(p, Decimal):
        return p
    return p.base  # type: ignore[no-any-return]


def _find_model(model: str, ours: str | None) -> tuple[tuple[Any, Any] | None, str]:
    """genai-prices' (provider, model) for our model and provider name, else (None, why)."""
    if ours == "local":
        return None, f"no price for model {model!r}: provider 'local' has no price list"
    snapshot = _genai().data_snapshot.get_snapshot()
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


def _model_boundaries(gp_model: Any, when: datetime, variants: bool = False) -> list[float]:
    """Instants near `when` at which this model's package price can change (a tier's variants too)."""
    prices = gp_model.prices
    constraints = [v.constraint for v in gp_model.price_variants or ()] if variants else []
    if isinstance(prices, list):
        constraints.extend(cp.constraint for cp in prices)
    out: list[float] = []
    day = when.date()
    for c in constraints:
        if c is None:
            continue
        if hasattr(c, "start_date"):
            out.append(_midnight_utc(c.start_date))
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


def _price_in_force(gp_model: Any, when: datetime) -> tuple[Any, date | None]:
    """genai-prices' ModelPrice at `when` (its own rule: the last active conditional price wins) and its start date."""
    prices = gp_model.prices
    if not isinstance(prices, list):
        return prices, None
    chosen = prices[0]
    for cp in reversed(prices):
        if cp.constraint is None or cp.constraint.active(when):
            chosen = cp
            break
    start = getattr(chosen.constraint, "start_date", None)
    return chosen.prices, start


def _price_context(gp_provider_id: str, tier: str | None) -> dict[str, str] | None:
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
    reg = _registry()
    keys = {_REQUESTS_KEY}
    for usage_key in (*_USAGE_ATTRS, *UNIT_KEYS):
        unit = reg.units.get(usage_key)
        if unit is not None:
            keys.add(unit.price_key)
    return frozenset(keys)


def _notes(gp_model: Any, model_price: Any) -> tuple[str, ...]:
    notes: list[str] = []
    prices = gp_model.prices
    if isinstance(prices, list):
        for cp in prices:
            c = cp.constraint
            if c is not None and hasattr(c, "start_time"):
                s, e = _utc_time(c.start_time), _utc_time(c.end_time)
                notes.append(f"time-of-day price: a different price applies {s:%H:%M}-{e:%H:%M} UTC")
    metered = _metered_price_keys()
    others = sorted(
        k
        for k, v in vars(model_price).items()
        if v is not None and not k.startswith("_") and k not in metered
    )
    if others:
        notes.append("also priced, not reported by any response llmbudget reads: " + ", ".join(others))
    return tuple(notes)


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
    found, _ = _find_model(model, _norm_provider(provider))
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


_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "google"),
    ("aiplatform.googleapis.com", "google"),
    ("api.x.ai", "xai"),
    ("api.deepseek.com", "deepseek"),
    ("openrouter.ai", "openrouter"),
    ("api.mistral.ai", "mistral"),
    ("api.groq.com", "groq"),
    ("api.together.xyz", "together"),
    ("api.together.ai", "together"),
    ("api.fireworks.ai", "fireworks"),
    ("api.cerebras.ai", "cerebras"),
    ("api.perplexity.ai", "perplexity"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.moonshot.ai", "moonshot"),
    ("api.moonshot.cn", "moonshot"),
    ("amazonaws.com", "aws"),
)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"})
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("chatgpt", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding", "openai"),
    ("davinci", "openai"),
    ("babbage", "openai"),
    ("whisper", "openai"),
    ("tts-", "openai"),
    ("dall-e", "openai"),
    ("codex", "openai"),
    ("claude", "anthropic"),
    ("gemini", "google"),
    ("gemma", "google"),
    ("grok", "xai"),
    ("deepseek", "deepseek"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("codestral", "mistral"),
    ("magistral", "mistral"),
    ("ministral", "mistral"),
    ("pixtral", "mistral"),
    ("devstral", "mistral"),
    ("command", "cohere"),
    ("kimi", "moonshot"),
    ("sonar", "perplexity"),
)


def provider_for(model: str, base_url: str | None = None, kind: str | None = None) -> str:
    """Best guess of our provider name for a call: by upstream host, then wire protocol, then model name."""
    if base_url:
        try:
            host = (urlsplit(base_url if "//" in base_url else f"//{base_url}").hostname or "").lower()
        except ValueError:
            host = ""
        if host in _LOCAL_HOSTS or host.endswith(".localhost") or host.startswith("127."):
            return "local"
        for suffix, name in _HOSTS:
            if host == suffix or host.endswith("." + suffix):
                return name
    if kind == "anthropic":
        return "anthropic"
    if kind == "gemini":
        return "google"
    m = (model or "").strip().lower()
    if "/" in m and base_url is None:
        m = m.split("/", 1)[1]  # "openai/gpt-4o" style names without a host
    for prefix, name in _MODEL_PREFIXES:
        if m.startswith(prefix):
            return name
    return "unknown"
