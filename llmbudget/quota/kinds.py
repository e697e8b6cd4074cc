"""The provider kinds a config may name: the built-in table plus plugins from an entry point group.

Imports nothing from the project, so the `providers:` config section (`llmbudget.quota.settings`)
can check a kind without loading the providers, which take that section's model as their argument.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "known_kinds", "plugins"]

ENTRY_POINT_GROUP = "llmbudget.providers"

#: kinds built into llmbudget (module:factory). `openrouter` is deliberately absent: it comes
#: through the entry point group, the same way a third-party plugin does.
BUILTIN: dict[str, str] = {
    "anthropic-unified": "llmbudget.quota.providers.builtin:anthropic_unified",
    "anthropic-api": "llmbudget.quota.providers.builtin:anthropic_api",
    "openai": "llmbudget.quota.providers.builtin:openai",
    "xai": "llmbudget.quota.providers.builtin:xai",
    "gemini": "llmbudget.quota.providers.builtin:GeminiProvider",
    "cost-header-proxy": "llmbudget.quota.providers.builtin:cost_header_proxy",
}


def plugins() -> dict[str, EntryPoint]:
    """The installed plugins by kind."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    """Every kind a config may name: built-ins first, then plugins."""
    found = plugins()
    return [*BUILTIN, *sorted(k for k in found if k not in BUILTIN)]
