"""Loading a provider by kind: the built-in table plus plugins (`llmbudget.quota.kinds`)."""

from __future__ import annotations

import importlib
import logging

from ...errors import ConfigError
from .. import kinds
from ..kinds import BUILTIN, ENTRY_POINT_GROUP, known_kinds
from .base import MissingKey, ProviderPlugin

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "MissingKey", "ProviderPlugin", "get_provider", "known_kinds"]

log = logging.getLogger("llmbudget.quota")


def get_provider(kind: str) -> ProviderPlugin:
    """Load the provider for `kind` (a factory or class is called without arguments)."""
    if kind in BUILTIN:
        module, _, attr = BUILTIN[kind].partition(":")
        obj = getattr(importlib.import_module(module), attr)
    else:
        ep = kinds.plugins().get(kind)
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
