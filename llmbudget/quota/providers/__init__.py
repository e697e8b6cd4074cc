"""Provider kinds: the built-in table plus plugins from the `llmbudget.providers` entry point group."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import EntryPoint, entry_points

from ...errors import ConfigError
from .base import MissingKey, ProviderPlugin

__all__ = ["ENTRY_POINT_GROUP", "MissingKey", "ProviderPlugin", "get_provider", "known_kinds"]

log = logging.getLogger("llmbudget.quota")

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


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    """Every kind a config may name: built-ins first, then plugins."""
    plugins = _plugins()
    return [*BUILTIN, *sorted(k for k in plugins if k not in BUILTIN)]


def get_provider(kind: str) -> ProviderPlugin:
    """Load the provider for `kind` (a factory or class is called without arguments)."""
    if kind in BUILTIN:
        module, _, attr = BUILTIN[kind].partition(":")
        obj = getattr(importlib.import_module(module), attr)
    else:
        ep = _plugins().get(kind)
        if ep is None:
            raise ConfigError(f"unknown provider kind {kind!r}; valid kinds: {', '.join(known_kinds())}")
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the other accounts down
            raise ConfigError(
                f"provider plugin {kind!r} ({ep.value}) failed to load: {type(e).__name__}: {e}"
            ) from e
    plugin = obj() if isinstance(obj, type) or not hasattr(obj, "probe") else obj
    if not isinstance(plugin, ProviderPlugin):
        raise ConfigError(
            f"provider plugin {kind!r} has no `kind` attribute and async `probe(account, session)`"
        )
    return plugin
