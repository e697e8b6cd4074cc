"""The `attribution:` config section: map request headers to attribution fields.

```yaml
attribution:
  infer_clients: true          # known agent clients attributed from what they already send (default)
  rules:
    - {header: X-Team-Name, field: team}                                  # the header's value
    - {header: User-Agent, regex: '^acme-bot/', field: agent, value: acme-bot}   # a fixed value on a match
    - {header: User-Agent, regex: '^(\\w+)-worker/', field: agent}         # the first capture group
    - {header: X-Env, equals: prod, field: tags.env, value: production}
```

Precedence, highest first: a virtual key's fixed attribution, explicit `X-LLMBudget-*` headers,
these rules (the first rule that yields a value for a field wins), then known-client inference.
This module is pure (no I/O); the proxy compiles the rules once (`llmbudget.capture.clients`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .attribution_table import CLIENT_TEXT

#: attribution fields a rule may set (besides `tags.<key>`): those a caller sets as text
RULE_FIELDS = CLIENT_TEXT
#: attribution values are bounded like the X-LLMBudget-* headers' values
MAX_VALUE_LEN = 200


class AttributionRule(BaseModel):
    """One rule: when request header `header` is present (and matches), set `field`."""

    model_config = ConfigDict(extra="forbid")

    #: request header name, case-insensitive (`User-Agent`, `X-Team`)
    header: str
    #: attribution field: agent, session, user, team, task_id, task_type, tier, or tags.<key>
    field: str
    #: the header's value must equal this (case-sensitive); without `equals`/`regex` any value matches
    equals: str | None = None
    #: a regular expression searched in the header's value (Python `re.search`)
    regex: str | None = None
    #: the value to set; without it: the regex's first capture group, else the header's value
    value: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        v = v.strip()
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v):
            raise ValueError(f"header {v!r} is not a valid HTTP header name")
        if v.lower().startswith("x-llmbudget-"):
            raise ValueError("X-LLMBudget-* headers are read directly; a rule cannot map them")
        return v.lower()

    @field_validator("field")
    @classmethod
    def _field(cls, v: str) -> str:
        if v in RULE_FIELDS:
            return v
        if v.startswith("tags.") and re.fullmatch(r"tags\.[A-Za-z0-9_.:-]{1,64}", v):
            return v
        raise ValueError(
            f"field {v!r} is not an attribution field; use one of {', '.join(RULE_FIELDS)} or tags.<key>"
        )

    @model_validator(mode="after")
    def _matchers(self) -> AttributionRule:
        if self.equals is not None and self.regex is not None:
            raise ValueError("give at most one of `equals` or `regex`")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"regex is not a valid regular expression: {e}") from e
        if self.value is not None and not self.value.strip():
            raise ValueError("value must not be empty")
        return self


class AttributionConfig(BaseModel):
    """The `attribution:` section."""

    model_config = ConfigDict(extra="forbid")

    #: attribute known agent clients (Claude Code, Codex, Gemini CLI, ...) from their own headers
    infer_clients: bool = True
    rules: list[AttributionRule] = Field(default_factory=list)


def apply_rule(rule: AttributionRule, pattern: re.Pattern[str] | None, header_value: str) -> str | None:
    """The value `rule` yields for a header value, or None when it does not match."""
    if rule.equals is not None and header_value != rule.equals:
        return None
    if pattern is not None:
        m = pattern.search(header_value)
        if m is None:
            return None
        if rule.value is None and m.groups():
            got = m.group(1)
            return clean_value(got) if got else None
    return clean_value(rule.value if rule.value is not None else header_value)


def clean_value(value: Any) -> str | None:
    """An attribution value: stripped, bounded, None when empty."""
    text = str(value).strip()[:MAX_VALUE_LEN]
    return text or None
