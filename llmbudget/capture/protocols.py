"""Each wire protocol as the capture layer uses it: the protocol's `WireProtocol` (`llmbudget/wire.py`)
plus how its calls are metered.

`PROTOCOLS[kind]` is looked up once per backend when the proxy (or `wrap()`) is set up; the
request path then asks that object, never the protocol's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..wire import ANTHROPIC, GEMINI, OPENAI, WireProtocol, guess_protocol
from . import anthropic, gemini, openai
from .base import CallMeter

#: (path after the backend, HTTP method, body, query string) -> the call's meter, None when unmetered;
#: raises `BadRequest` on a body that cannot be metered
MeterMaker = Callable[[str, str, bytes, str], CallMeter | None]
#: a request object (or an SDK method's keywords) -> the service tier it asks for, None: standard
TierReader = Callable[[Mapping[str, Any]], str | None]


def _no_tier(request: Mapping[str, Any]) -> str | None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class MeteredProtocol(WireProtocol):
    """A wire protocol with its meters."""

    make_meter: MeterMaker
    requested_tier: TierReader = _no_tier
    #: WebSocket paths relayed and metered: (path suffix, api) pairs (OpenAI's Responses and Realtime)
    websocket_apis: tuple[tuple[str, str], ...] = ()
    #: a WebSocket the protocol has but the relay refuses: (path marker, why), answered 400
    websocket_refused: tuple[str, str] | None = None

    @classmethod
    def of(cls, wire: WireProtocol, **metering: Any) -> MeteredProtocol:
        facts = {f.name: getattr(wire, f.name) for f in dataclasses.fields(wire)}
        return cls(**facts, **metering)

    def websocket_api(self, rest: str) -> str | None:
        """The API a WebSocket upgrade of `rest` speaks (`responses`, `realtime`), None when not relayed."""
        p = rest.rstrip("/")
        for suffix, api in self.websocket_apis:
            if p.endswith(suffix):
                return api
        return None

    def websocket_refusal(self, rest: str) -> str | None:
        """Why a WebSocket of this protocol at `rest` is refused outright (None: the usual refusal)."""
        refused = self.websocket_refused
        return refused[1] if refused is not None and refused[0] in rest else None


GEMINI_LIVE_REFUSED = (
    "llmbudget does not relay Gemini Live (BidiGenerateContent) WebSockets: its usage cannot be "
    "metered per response yet. Use generateContent / streamGenerateContent over HTTP through this proxy."
)

OPENAI_METERED = MeteredProtocol.of(
    OPENAI,
    make_meter=openai.make_meter,
    requested_tier=openai.tier_of,
    websocket_apis=(("/responses", "responses"), ("/realtime", "realtime")),
)
ANTHROPIC_METERED = MeteredProtocol.of(
    ANTHROPIC, make_meter=anthropic.make_meter, requested_tier=anthropic.requested_tier
)
GEMINI_METERED = MeteredProtocol.of(
    GEMINI, make_meter=gemini.make_meter, websocket_refused=("BidiGenerateContent", GEMINI_LIVE_REFUSED)
)

#: every protocol by the backend `kind` that names it
PROTOCOLS: dict[str, MeteredProtocol] = {
    p.name: p for p in (OPENAI_METERED, ANTHROPIC_METERED, GEMINI_METERED)
}


def metered(kind: str | None) -> MeteredProtocol:
    """The protocol a backend `kind` names; OpenAI's for anything else."""
    return PROTOCOLS.get(kind or "", OPENAI_METERED)


def guess_metered(path: str) -> MeteredProtocol:
    """The protocol a path most likely speaks (for errors on requests that matched no backend)."""
    return PROTOCOLS[guess_protocol(path).name]
