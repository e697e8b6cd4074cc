"""Money: Decimal USD in code, integer nano-USD (1e-9 USD) in storage, so sums are exact."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000
_NANO = NANO_USD = Decimal("0.000000001")
ZERO = Decimal(0)
#: the largest budget limit accepted: its nano-USD fit the 64-bit counters with room to spare
MAX_LIMIT_USD = Decimal(10**9)


def limit_problem(amount: Decimal) -> str | None:
    """Why `amount` cannot be a budget limit in USD (None when it can): finite, >= 0, at most $1e9."""
    if not amount.is_finite() or amount < 0:
        return "must be a non-negative amount"
    if amount > MAX_LIMIT_USD:
        return f"must be at most ${MAX_LIMIT_USD:,}"
    return None


def to_nano(usd: Decimal | int | str) -> int:
    """Convert USD to integer nano-USD, rounding half-even at the ninth decimal."""
    if isinstance(usd, float):  # floats carry binary noise: refuse rather than guess
        raise TypeError("money must be Decimal, int or str, not float")
    try:
        d = usd if isinstance(usd, Decimal) else Decimal(usd)
    except InvalidOperation as e:
        raise ValueError(f"not a money amount: {usd!r}") from e
    return int((d * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nano(nanos: int) -> Decimal:
    """Convert integer nano-USD to an exact Decimal USD."""
    return (Decimal(nanos) / NANOS_PER_USD).quantize(_NANO) if nanos else Decimal("0E-9")


def usd(value: Decimal | int | str | float) -> Decimal:
    """Parse a user-supplied amount (config, import file) into Decimal; floats go through their repr."""
    if isinstance(value, float):
        value = repr(value)
    try:
        return Decimal(value)
    except InvalidOperation as e:
        raise ValueError(f"not a money amount: {value!r}") from e


def format_usd(amount: Decimal | None, places: int = 4) -> str:
    """Human formatting: `$1.2345`; None (unpriced) prints as `unpriced`."""
    if amount is None:
        return "unpriced"
    q = Decimal(1).scaleb(-places)
    shown = amount.quantize(q, rounding=ROUND_HALF_EVEN)
    if shown == 0 and amount != 0:
        # rounding would show a real amount as $0.00 (or a limit of $0.001 as "<$0.01"): show it whole
        return format_exact(amount)
    return f"${shown:,}"


def format_exact(amount: Decimal, min_places: int = 2) -> str:
    """The amount exactly, with at least `min_places` decimals and never an exponent: `$0.001`, `$5.00`, `$0.015`.

    For limits, which must read as configured: rounding a $0.015 limit to `$0.02` misstates it.
    """
    d = amount.normalize()
    exponent = d.as_tuple().exponent
    places = max(min_places, -exponent if isinstance(exponent, int) and exponent < 0 else 0)
    return f"${d.quantize(Decimal(1).scaleb(-places)):,f}"


def json_number(amount: Decimal | None) -> float | None:
    """Money for JSON output. Exact Decimal strings are kept in `*_nano` fields; this is the readable number."""
    return None if amount is None else float(amount)


def decimal_str(amount: Decimal) -> str:
    """An exact decimal string without exponent notation (`0.000000001`, never `1E-9`), for JSON and CSV."""
    return format(amount, "f")
