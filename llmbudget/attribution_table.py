"""The attribution fields: one table, and every spelling of a field derived from it.

A call is attributed to an agent, a session, a user, a team, a task (id and type), a tier, free
tags and the virtual key it carried. Each field is spelled in many places: the `X-LLMBudget-*`
request header, the keyword of `wrap()`, the events column, the report filter (`--task-type` on
the CLI, `?task-type=` in the API), the `--by` choice, the budget scope. `FIELDS` holds them all;
the proxy's header table, `events.ATTRIBUTION`, the report filters and `--by` choices, the
ledger's dimensions and filters, the budget scopes and the attribution rules' fields are derived
from it, and `tests/test_attribution_table.py` checks what cannot be derived (typed signatures,
the schema, the CLI options) against it. Adding a field is a row here plus a migration.

This module is pure: it imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the longest value an attribution header (`X-LLMBudget-*`) may have, in characters once decoded
MAX_HEADER_CHARS = 256


@dataclass(frozen=True, slots=True)
class AttributionField:
    """One attribution field and every name it goes by."""

    #: the attribute of `UsageEvent` and `CallInfo`
    name: str
    #: request headers that set it (lower case; the first is the one documented), () when none does
    headers: tuple[str, ...]
    #: the keyword argument of `wrap()`, None when the SDK cannot set it
    sdk_keyword: str | None
    #: the `events` column that stores it
    column: str
    #: names the reports filter it by: `--NAME` on the CLI, `?NAME=` in the API (the first is the
    #: CLI's spelling, the rest aliases); () when reports cannot filter on it
    filters: tuple[str, ...]
    #: the `--by` choice (CLI spelling) grouping reports by it, None when it cannot
    by: str | None
    #: the budget scope (`budgets.limits[].scope`) counting per value of it, None when none does
    scope: str | None
    #: set by the caller (headers, `wrap()`, attribution rules, imported logs) as one text value;
    #: False for the tags (a mapping) and the virtual key (stamped by the server)
    client_text: bool
    #: the longest value a request header may carry for it, in characters
    max_chars: int = MAX_HEADER_CHARS

    @property
    def option(self) -> str | None:
        """The CLI option of the report commands (`--task-type`), None when it has no filter."""
        return f"--{self.filters[0]}" if self.filters else None

    @property
    def api_params(self) -> tuple[str, ...]:
        """The query parameters of the report routes (`/api/costs?task-type=...`)."""
        return self.filters


#: every attribution field, in the order reports show them
FIELDS: tuple[AttributionField, ...] = (
    AttributionField(
        name="agent",
        headers=("x-llmbudget-agent",),
        sdk_keyword="agent",
        column="agent",
        filters=("agent",),
        by="agent",
        scope="agent",
        client_text=True,
    ),
    AttributionField(
        name="session",
        headers=("x-llmbudget-session",),
        sdk_keyword="session",
        column="session",
        filters=("session",),
        by="session",
        scope="session",
        client_text=True,
    ),
    AttributionField(
        name="user",
        headers=("x-llmbudget-user",),
        sdk_keyword="user",
        column="user_name",  # `user` is a reserved word in PostgreSQL
        filters=("user",),
        by="user",
        scope="user",
        client_text=True,
    ),
    AttributionField(
        name="team",
        headers=("x-llmbudget-team",),
        sdk_keyword="team",
        column="team",
        filters=("team",),
        by="team",
        scope="team",
        client_text=True,
    ),
    AttributionField(
        name="task_id",
        headers=("x-llmbudget-task", "x-llmbudget-task-id"),
        sdk_keyword="task_id",
        column="task_id",
        filters=("task", "task_id"),
        by=None,  # one task's calls are found with --task, not grouped
        scope=None,
        client_text=True,
    ),
    AttributionField(
        name="task_type",
        headers=("x-llmbudget-task-type",),
        sdk_keyword="task_type",
        column="task_type",
        filters=("task-type", "task_type"),
        by="task-type",
        scope="task_type",
        client_text=True,
    ),
    AttributionField(
        name="tier",
        headers=("x-llmbudget-tier",),
        sdk_keyword="tier",
        column="tier",
        filters=("tier",),
        by="tier",
        scope=None,
        client_text=True,
    ),
    AttributionField(
        name="tags",
        headers=("x-llmbudget-tags",),  # `k=v,k=v`
        sdk_keyword="tags",
        column="tags",  # a JSON object
        filters=(),
        by=None,
        scope=None,
        client_text=False,
    ),
    AttributionField(
        name="key",  # the virtual key's name, stamped by the server from the key the call carried
        headers=(),
        sdk_keyword=None,
        column="key",
        filters=("key",),
        by="key",
        scope="key",
        client_text=False,
    ),
)

BY_NAME: dict[str, AttributionField] = {f.name: f for f in FIELDS}
#: the text fields a caller sets (headers, `wrap()`, attribution rules, imported logs)
CLIENT_TEXT: tuple[str, ...] = tuple(f.name for f in FIELDS if f.client_text)
#: request header (lower case, bytes) -> field, as the proxy reads them
HEADER_FIELDS: dict[bytes, str] = {h.encode("ascii"): f.name for f in FIELDS for h in f.headers}
#: report filter name (CLI and API spelling) -> field
FILTER_NAMES: dict[str, str] = {n: f.name for f in FIELDS for n in f.filters}
#: fields reports can filter on
FILTER_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.filters)
#: `--by` choice (CLI spelling) -> field
BY_CHOICES: dict[str, str] = {f.by: f.name for f in FIELDS if f.by is not None}
#: budget scope -> field
SCOPE_FIELDS: dict[str, str] = {f.scope: f.name for f in FIELDS if f.scope is not None}
#: field -> events column, where the two differ
COLUMN_OF: dict[str, str] = {f.name: f.column for f in FIELDS if f.column != f.name}
