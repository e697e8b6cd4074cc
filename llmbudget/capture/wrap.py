"""In-process metering without a proxy: `wrap(client)` for the official OpenAI and Anthropic SDKs.

The client's HTTP transport is wrapped (`llmbudget/capture/sdk_transport.py`), so every call the SDK makes goes through the same
protocol meters as the proxy and becomes the same `UsageEvent` (`source: sdk`): chat
completions, responses, completions, embeddings, messages (streamed and not, `messages.stream`
included). A stream is metered when its iteration ends, when it is closed, or when it is
abandoned and garbage-collected. With a budget `gate`, the resource methods ask it first
(`llmbudget/capture/sdk_gate.py`) and
raise `BudgetExceeded` (or call `fallback`, another client) when it refuses. A sync client asks
the gate's sync face in its own thread (no event loop, no thread of ours); an async client awaits
its async face on the caller's event loop.

    from openai import OpenAI
    from llmbudget import wrap
    client = wrap(OpenAI(), agent="researcher", session="s-42", tags={"project": "alpha"})
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from ..config import load_config, resolve_db_url
from ..pricing import PriceBook
from ..store import ledger_options, open_ledger
from .protocols import ANTHROPIC_METERED, OPENAI_METERED, MeteredProtocol
from .record import CallRecorder, Target
from .sdk_gate import gate_async, gate_async_stream, gate_sync, resolve
from .sdk_transport import AsyncTransport, ClientState, SyncTransport

#: what a gate offers a sync client: called in the caller's thread, no event loop
_SYNC_FACE = ("admit_sync", "settle_sync", "release_sync")

_OPENAI_METHODS: list[tuple[tuple[str, ...], str]] = [
    (("chat", "completions", "create"), "chat"),
    (("responses", "create"), "responses"),
    (("completions", "create"), "completions"),
    (("embeddings", "create"), "embeddings"),
]
_ANTHROPIC_METHODS: list[tuple[tuple[str, ...], str]] = [
    (("messages", "create"), "messages"),
    (("messages", "stream"), "stream"),
]
#: the SDK (its top-level module) -> the wire protocol it speaks and its gated resource methods
_SDKS: dict[str, tuple[MeteredProtocol, list[tuple[tuple[str, ...], str]]]] = {
    "openai": (OPENAI_METERED, _OPENAI_METHODS),
    "anthropic": (ANTHROPIC_METERED, _ANTHROPIC_METHODS),
}


# ------------------------------------------------------------------ public API


def wrap(
    client: Any,
    *,
    agent: str | None = None,
    session: str | None = None,
    user: str | None = None,
    team: str | None = None,
    task_id: str | None = None,
    task_type: str | None = None,
    tier: str | None = None,
    tags: dict[str, str] | None = None,
    ledger: Any = None,
    prices: Any = None,
    gate: Any = None,
    backend: str | None = None,
    fallback: Any = None,
    provider: str | None = None,
    local: bool = False,
) -> Any:
    """Meter every call `client` makes (OpenAI/AsyncOpenAI/Anthropic/AsyncAnthropic); returns the same client.

    `ledger` defaults to the configured ledger (config lookup as the CLI), `prices` to its price
    book. `backend` names the events' backend (default `openai` / `anthropic`). With a `gate`, a
    refused call raises `BudgetExceeded` with the notice; a fallback admission calls `fallback`
    (another client, wrap it to meter it too) or raises when none is given. A sync client calls
    the gate's sync face (`admit_sync`, ...) in its own thread, an async client awaits its async
    face on the caller's event loop; `BudgetGate` (`gate_from_config()`) has both.
    """
    module = type(client).__module__.split(".")[0]
    sdk = _SDKS.get(module)
    if sdk is None:
        raise TypeError(f"wrap() takes an openai or anthropic client, not {type(client).__name__}")
    http = getattr(client, "_client", None)
    inner = getattr(http, "_transport", None)
    if http is None or inner is None:
        raise TypeError("this client has no HTTP transport to wrap (unsupported SDK version?)")
    if isinstance(inner, SyncTransport | AsyncTransport):
        raise ValueError("this client is already wrapped")
    is_async = hasattr(inner, "handle_async_request")
    if gate is not None and not is_async and not all(callable(getattr(gate, m, None)) for m in _SYNC_FACE):
        raise TypeError(
            f"a {type(client).__name__} client needs a gate with a sync face "
            "(admit_sync, settle_sync, release_sync), such as llmbudget.budget.gate_from_config()"
        )
    if ledger is None or prices is None:
        cfg = load_config()
        if ledger is None:
            ledger = _default_ledger(resolve_db_url(None, cfg), cfg)
        if prices is None:
            prices = PriceBook.from_config(cfg)
    attribution: dict[str, Any] = {
        # `llmbudget run` sets these for the command it runs
        "agent": agent or os.environ.get("LLMBUDGET_AGENT") or None,
        "session": session or os.environ.get("LLMBUDGET_SESSION") or None,
        "user": user,
        "team": team,
        "task_id": task_id,
        "task_type": task_type,
        "tier": tier,
        "tags": dict(tags or {}),
    }
    base_url = str(getattr(client, "base_url", ""))
    protocol, methods = sdk
    rec = ClientState(
        protocol=protocol,
        target=Target(
            backend=backend or module, protocol=protocol, base_url=base_url, provider=provider, local=local
        ),
        recorder=CallRecorder(ledger, prices, gate, source="sdk"),
        attribution=attribution,
        gate=gate,
    )
    mod = sys.modules[type(inner).__module__.split(".")[0]]
    http._transport = (AsyncTransport if is_async else SyncTransport)(inner, rec, mod)
    if gate is not None:
        for path, name in methods:
            resource = resolve(client, path[:-1])
            original = getattr(resource, path[-1])
            if not is_async:
                gated = gate_sync
            elif name == "stream":  # a plain method returning an async context manager
                gated = gate_async_stream
            else:
                gated = gate_async
            wrapped = gated(rec, original, name, fallback, path)
            setattr(resource, path[-1], wrapped)
    return client


_ledgers: dict[str, Any] = {}
_ledgers_lock = threading.Lock()


def _default_ledger(url: str, cfg: Any) -> Any:
    """One ledger per URL per process, shared by every wrapped client (closed at exit by the store)."""
    with _ledgers_lock:
        if url not in _ledgers:
            _ledgers[url] = open_ledger(url, **ledger_options(cfg))
        return _ledgers[url]
