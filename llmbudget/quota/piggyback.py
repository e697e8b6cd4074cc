"""Quota readings that ride on proxied answers (`piggyback`): rate-limit headers and quota in error bodies.

The proxy keeps each answer's signals raw (`PendingReading`) on the request path; they are parsed
here, off that path. What the backend's wire protocol says decides how (`WireProtocol`,
`llmbudget/wire.py`): its rate-limit headers are read by `llmbudget/quota/headers.py`; a protocol
whose error bodies carry the quota (Gemini: no rate-limit headers, the 429's body says which quota)
gets a reading from the body, and a success after an error reads "allowed".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..wire import RATE_PREFIXES, WireProtocol
from .headers import parse_rate_limit_headers
from .providers.builtin import parse_google_error
from .readings import QuotaReading


@dataclass(slots=True)
class PendingReading:
    """A response's quota signals, kept raw on the request path and parsed later."""

    #: the response's raw headers (bytes pairs, as aiohttp keeps them)
    raw: Sequence[tuple[bytes, bytes]]
    #: when the answer came (unix seconds)
    when: float
    http_status: int
    #: an error body of a protocol whose error bodies carry the quota (Gemini's 429)
    body: bytes | None = None


def piggyback_reading(backend: str, protocol: WireProtocol, pending: PendingReading) -> QuotaReading | None:
    """Parse one response's quota signals into a `piggyback` reading (None when it carries none)."""
    pairs = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in pending.raw
        if k.lower().startswith(RATE_PREFIXES)
    ]
    when = datetime.fromtimestamp(pending.when, UTC)
    reading = parse_rate_limit_headers(
        pairs, now=when, backend=backend, source="piggyback", http_status=pending.http_status
    )
    if not protocol.quota_in_error_body:
        return reading
    if reading is None:
        reading = QuotaReading(
            timestamp=when,
            backend=backend,
            provider=protocol.name,
            source="piggyback",
            http_status=pending.http_status,
        )
    else:
        reading.provider = protocol.name
    if pending.body is not None:
        parse_google_error(pending.body, reading)
    elif pending.http_status < 400:
        reading.status = "allowed"  # the call went through: under quota (as the Gemini probe says)
    return reading if reading.has_data or pending.http_status == 429 else None
