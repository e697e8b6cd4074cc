"""The contract between the proxy (and SDK wrappers) and budget enforcement.

The proxy builds a `CallInfo` before forwarding and asks the gate (`services.gate`,
absent when no budgets are configured) to admit it. The gate reserves the call's worst-case
cost atomically against every budget that applies and answers with an `Admission`: allowed,
refused (429 in the protocol's error shape), or served by a fallback backend. When the call
ends the proxy settles the admission with the recorded event, or releases it when nothing was
spent (connection failure before any byte). `wrap()` asks the same gate: through its async face
for an async client, its sync face for a sync one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .events import UsageEvent


@dataclass(slots=True)
class CallInfo:
    """What is known about a call before it is forwarded."""

    backend: str
    #: wire protocol: openai | anthropic | gemini
    protocol: str
    provider: str
    model: str
    #: input tokens counted or bounded from the request body
    est_input_tokens: int
    #: max_tokens / max_output_tokens from the request, None when the client set none
    max_output_tokens: int | None
    local: bool = False
    #: outputs the request can produce (OpenAI `n`, completions `best_of`, Gemini `candidateCount`)
    choices: int = 1
    #: the service tier the request asks for (priced when reserving); None: the standard tier
    service_tier: str | None = None
    streamed: bool = False
    agent: str | None = None
    session: str | None = None
    user: str | None = None
    team: str | None = None
    task_id: str | None = None
    task_type: str | None = None
    tier: str | None = None
    #: the virtual key's name, when the call carried one
    key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Admission:
    """The gate's answer. `allowed` False means refuse with `status` (429) and `message`."""

    allowed: bool
    reservation_id: str | None = None
    #: serve the call on this backend instead (model replaced by `fallback_model` when set)
    fallback_backend: str | None = None
    fallback_model: str | None = None
    #: sentence for the X-LLMBudget-Notice header / the error message
    notice: str | None = None
    message: str | None = None
    status: int = 429
    retry_after_s: int | None = None
    #: names of the budgets this call was reserved against
    budgets: tuple[str, ...] = ()
    #: refused only because calls in flight hold the rest of the budget (it may fit once they settle)
    held_by_inflight: bool = False


class Gate(Protocol):
    """Admits, settles and releases calls; one gate, two faces that answer alike.

    The async face serves the proxy and async SDK clients, awaited on the caller's event loop.
    The sync face serves sync SDK clients (`wrap()`), called in the caller's thread with no event
    loop. The proxy needs only the async face; `wrap()` of a sync client needs the sync one.
    """

    async def admit(self, call: CallInfo) -> Admission: ...

    async def settle(self, admission: Admission, event: UsageEvent) -> None: ...

    async def release(self, admission: Admission) -> None: ...

    def admit_sync(self, call: CallInfo) -> Admission: ...

    def settle_sync(self, admission: Admission, event: UsageEvent) -> None: ...

    def release_sync(self, admission: Admission) -> None: ...
