"""What the price book answers: a call's cost (`PriceResult`) and the prices in force (`PriceInfo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from ..money import to_nano

PriceStatus = Literal["priced", "override", "unpriced", "local"]


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

    def to_dict(self) -> dict[str, object]:
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
