"""A price set compiled to integer arithmetic: the cost of one call's usage in nano-USD.

Built once per cached price span by the book (`llmbudget/pricing/book.py`); `Compiled.nano` is
the proxy's and re-pricing's hot path, so it does integer work only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from .genai import USAGE_ATTRS, registry
from .normalize import TokenUsage

if TYPE_CHECKING:  # genai-prices: `Price` names its types, which load with its data on first use
    from genai_prices.units import UnitDef

    from .genai import Price


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
class Rate:
    """One token price in integer units of 10^-k USD per million tokens, with its tiers."""

    base: int
    #: ((threshold, price), ...) highest threshold first; the whole call pays the first one its input exceeds
    tiers: tuple[tuple[int, int], ...] = ()

    def at(self, total_input: int) -> int:
        for start, price in self.tiers:
            if total_input > start:
                return price
        return self.base


class Compiled:
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
    basic: tuple[Rate | None, Rate | None, Rate | None, Rate | None, int] | None
    #: (TokenUsage attribute or None for a `units` key, usage key, descendant indexes, rate, multiplier)
    entries: tuple[tuple[str | None, str, tuple[int, ...], Rate, int], ...]

    def __init__(self, prices: Mapping[str, Price | None]) -> None:
        reg = registry()
        priced: list[tuple[UnitDef, Price]] = []
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

        def rate(p: Price) -> Rate:
            if isinstance(p, Decimal):
                return Rate(_as_int(p, k))
            tiers = tuple(
                (int(t.start), _as_int(t.price, k)) for t in sorted(p.tiers, key=lambda t: -t.start)
            )
            return Rate(_as_int(p.base, k), tiers)

        self.request = 0
        counted: list[tuple[UnitDef, Price]] = []
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
                (USAGE_ATTRS.get(unit.usage_key), unit.usage_key, desc, rate(p), lcm // int(unit.per))
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
