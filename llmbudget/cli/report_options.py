"""The report commands' shared options: the time range, one per attribution filter, `--by`.

`costs`, `events` and `export` take the same filters; `filters` turns their values into what
`llmbudget.reports` checks and the ledger takes.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import reports

SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Start: a date (2025-03-01), a month (2025-03), 7d, 24h, 2w, today, yesterday, "
        "'this week', 'last week', 'this month', 'last month'.",
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option("--until", help="End, same forms as --since; a date or period means through its end."),
]
AgentOpt = Annotated[str | None, typer.Option("--agent", help="Only this agent.")]
SessionOpt = Annotated[str | None, typer.Option("--session", help="Only this session.")]
UserOpt = Annotated[str | None, typer.Option("--user", help="Only this user.")]
TeamOpt = Annotated[str | None, typer.Option("--team", help="Only this team.")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Only this model (as the provider answered it).")
]
BackendOpt = Annotated[str | None, typer.Option("--backend", help="Only this configured backend.")]
ProviderOpt = Annotated[
    str | None, typer.Option("--provider", help="Only this provider (openai, anthropic, ...).")
]
TaskTypeOpt = Annotated[str | None, typer.Option("--task-type", help="Only this task type.")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Only this task id.")]
TierOpt = Annotated[str | None, typer.Option("--tier", help="Only this tier (role).")]
KeyOpt = Annotated[
    str | None, typer.Option("--key", help="Only calls made with this virtual key (its name).")
]
StatusOpt = Annotated[
    str | None, typer.Option("--status", help="Only this status: ok, error, interrupted, blocked, fallback.")
]
ByOpt = Annotated[
    str | None,
    typer.Option(
        "--by",
        help=f"Group by {reports.BY_HELP}.",
    ),
]


def filters(**values: str | None) -> dict[str, str]:
    """The filters given, by their option names (`task_type` is `--task-type`), checked."""
    return reports.build_filters({k.replace("_", "-"): v for k, v in values.items()})
