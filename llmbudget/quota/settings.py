"""The `providers:` config section: the accounts whose quota llmbudget watches."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .kinds import known_kinds

BUILTIN_KINDS = (
    "anthropic-unified",
    "anthropic-api",
    "openai",
    "xai",
    "gemini",
    "openrouter",
    "cost-header-proxy",
)


class ProviderConfig(BaseModel):
    """One watched account: `name`, `kind`, where to reach it, which env var holds its key."""

    model_config = ConfigDict(extra="forbid")

    name: str
    #: a built-in kind or one registered by a plugin under the `llmbudget.providers` entry point group
    kind: str
    #: default per kind (https://api.anthropic.com, https://api.openai.com, ...); required for cost-header-proxy
    base_url: str | None = None
    #: environment variable holding the key or token (never the key itself)
    api_key_env: str | None = None
    #: model used by the probe call (a small default per kind)
    model: str | None = None
    probe_timeout_s: float = Field(default=10.0, gt=0, le=600)
    #: free-form settings for plugin kinds
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]*", v):
            raise ValueError(f"provider name {v!r} must be letters, digits, '-', '_', '.' or '@'")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        kinds = known_kinds()
        if v not in kinds:
            builtin = [k for k in kinds if k in BUILTIN_KINDS]
            plugins = [k for k in kinds if k not in BUILTIN_KINDS]
            msg = f"unknown provider kind {v!r}; valid kinds: {', '.join(builtin)}"
            msg += f"; plugins: {', '.join(plugins)}" if plugins else " (no plugins installed)"
            raise ValueError(msg)
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v.rstrip("/") if v else v

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        # a pasted key here would be stored in the config and shown by `config show`
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(
                "must be the NAME of an environment variable (e.g. ANTHROPIC_API_KEY), not a key"
            )
        return v

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderConfig:
        if self.kind == "cost-header-proxy" and not self.base_url:
            raise ValueError("a cost-header-proxy account needs `base_url` (the proxy's address)")
        return self


def _unique(v: list[ProviderConfig]) -> list[ProviderConfig]:
    seen: set[str] = set()
    for p in v:
        if p.name in seen:
            raise ValueError(f"provider name {p.name!r} is used twice; names must be unique")
        seen.add(p.name)
    return v


ProviderList = Annotated[list[ProviderConfig], AfterValidator(_unique)]


class QuotaSettings(BaseModel):
    """The `quota:` config section: how quota readings are judged and kept."""

    model_config = ConfigDict(extra="forbid")

    #: readings older than this many days are archived and deleted by `analyze --prune`
    retention_days: int = Field(default=30, ge=1, le=36500, strict=True)
    #: share of a window, bucket or credit at which an account is WARNING (`monitor`, `summary`, rotation)
    warn_at: float = Field(default=0.8, gt=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, v: object) -> object:
        # `quota:` with nothing under it means the defaults
        return {} if v is None else v
