"""Attribution with no set-up: known agent clients and `attribution.rules`.

Known clients are recognised by headers they send on every call anyway (read from each client's
source; the README's table lists them). `Attributor.fill` only fills fields the request left
unset, so explicit `X-LLMBudget-*` headers (and a virtual key's fixed attribution, applied
after) always win; `attribution.rules` come before the known clients.

It runs on every proxied request: one pass over the raw header list, a dict look-up per header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..attribution import AttributionConfig, AttributionRule, apply_rule, clean_value


@dataclass(frozen=True, slots=True)
class KnownClient:
    """A client recognised by one header: `header` starting with (or equal to) one of `values`."""

    name: str
    #: the agent name its calls get
    agent: str
    #: request header that identifies it (lower case)
    header: str
    #: prefixes of that header's value (or exact values when `exact`); empty: any value
    values: tuple[str, ...]
    exact: bool = False
    #: headers carrying the client's own session id, first present wins (lower case)
    session_headers: tuple[str, ...] = ()
    #: where this was read (shown in the README's table)
    source: str = ""
    #: use the header's own value as the agent (OpenRouter-style app names)
    agent_from_value: bool = False


#: Ordered: the first client that matches names the agent. Sources are the clients' own code.
KNOWN_CLIENTS: tuple[KnownClient, ...] = (
    KnownClient(
        "Claude Code",
        "claude-code",
        "user-agent",
        ("claude-cli/",),
        session_headers=("x-claude-code-session-id",),
        source="sends `user-agent: claude-cli/<version> (external, cli)` and `x-claude-code-session-id`",
    ),
    KnownClient(
        "Codex CLI",
        "codex",
        "originator",
        ("codex_cli_rs", "codex_exec", "codex-tui", "codex_vscode"),
        exact=True,
        # codex-rs/codex-api `build_session_headers` sends `session-id`; older releases `session_id`
        # and `conversation_id`
        session_headers=("session-id", "session_id", "conversation_id"),
        source="codex-rs default_client.rs `DEFAULT_ORIGINATOR`; codex-api `build_session_headers`",
    ),
    KnownClient(
        "Codex CLI",
        "codex",
        "user-agent",
        ("codex_cli_rs/", "codex_exec/"),
        session_headers=("session-id", "session_id", "conversation_id"),
        source="user agent `{originator}/{version} (...)` (default_client.rs `get_codex_user_agent`)",
    ),
    KnownClient(
        "Gemini CLI",
        "gemini-cli",
        "user-agent",
        ("GeminiCLI/", "GeminiCLI-"),
        source="packages/core/src/core/contentGenerator.ts: `GeminiCLI/<version>/<model> (<platform>; <arch>; <surface>)`",
    ),
    KnownClient(
        "OpenAI Agents SDK (openai-agents)",
        "openai-agents",
        "user-agent",
        ("Agents/Python",),
        source='src/agents/models/openai_responses.py: `_USER_AGENT = f"Agents/Python {__version__}"`',
    ),
    KnownClient(
        "Pydantic AI",
        "pydantic-ai",
        "user-agent",
        ("pydantic-ai/",),
        source="pydantic_ai/models/__init__.py `get_user_agent()`: `pydantic-ai/<version>` (its own HTTP client)",
    ),
    KnownClient(
        "LiteLLM SDK",
        "litellm",
        "user-agent",
        ("litellm/",),
        source="litellm/llms/custom_httpx/http_handler.py: `User-Agent: litellm/<version>`",
    ),
    KnownClient(
        "aider",
        "aider",
        "x-title",
        ("Aider",),
        exact=True,
        source="aider's OpenRouter headers `HTTP-Referer: https://aider.chat`, `X-Title: Aider`",
    ),
    KnownClient(
        "any app naming itself OpenRouter-style",
        "",
        "x-title",
        (),
        agent_from_value=True,
        source="OpenRouter app attribution header `X-Title: <app name>`",
    ),
)


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: AttributionRule
    pattern: re.Pattern[str] | None


class Attributor:
    """Fills a request's unset attribution fields from rules, then from known clients."""

    __slots__ = ("_clients", "_interest", "_rules")

    def __init__(self, rules: Iterable[AttributionRule] = (), *, infer_clients: bool = True) -> None:
        self._rules = tuple(
            _CompiledRule(r, re.compile(r.regex) if r.regex is not None else None) for r in rules
        )
        self._clients = KNOWN_CLIENTS if infer_clients else ()
        names: set[str] = {cr.rule.header for cr in self._rules}
        for c in self._clients:
            names.add(c.header)
            names.update(c.session_headers)
        self._interest = frozenset(n.encode("latin-1") for n in names)

    @classmethod
    def from_config(cls, cfg: AttributionConfig | None) -> Attributor | None:
        """The attributor for a config section; None when it would never set anything."""
        cfg = cfg or AttributionConfig()
        if not cfg.rules and not cfg.infer_clients:
            return None
        return cls(cfg.rules, infer_clients=cfg.infer_clients)

    def fill(self, raw_headers: Iterable[tuple[bytes, bytes]], attribution: dict[str, Any]) -> None:
        """Set the fields `attribution` lacks from the request's raw (lower-case ASGI) headers."""
        interest = self._interest
        seen: dict[str, str] = {}
        for k, v in raw_headers:
            if k in interest:
                name = k.decode("latin-1")
                if name not in seen:
                    seen[name] = v.decode("utf-8", "replace")
        if not seen:
            return
        for cr in self._rules:
            header_value = seen.get(cr.rule.header)
            if header_value is None:
                continue
            target = cr.rule.field
            if target.startswith("tags."):
                key = target[5:]
                tags = attribution.get("tags") or {}
                if key in tags:
                    continue
                got = apply_rule(cr.rule, cr.pattern, header_value)
                if got is not None:
                    attribution["tags"] = {**tags, key: got}
                continue
            if attribution.get(target) is not None:
                continue
            got = apply_rule(cr.rule, cr.pattern, header_value)
            if got is not None:
                attribution[target] = got
        for client in self._clients:
            value = seen.get(client.header)
            if value is None or not _matches(client, value):
                continue
            if attribution.get("agent") is None:
                agent = clean_value(value) if client.agent_from_value else client.agent
                if agent:
                    attribution["agent"] = agent
            if attribution.get("session") is None:
                for h in client.session_headers:
                    sid = seen.get(h)
                    if sid:
                        attribution["session"] = clean_value(sid)
                        break
            break


def _matches(client: KnownClient, value: str) -> bool:
    if not client.values:
        return bool(value.strip())
    if client.exact:
        return value.strip() in client.values
    return value.startswith(client.values)
