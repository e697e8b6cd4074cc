"""CLI command: `llmbudget run [--agent A] [--session S] [--budget USD] -- CMD ARGS...`."""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ..config import Config
from ..errors import ValidationError
from ..money import NANO_USD, decimal_str, format_usd, limit_problem
from ..store import open_ledger
from . import common

if TYPE_CHECKING:  # start-up: only types here; the runner and the services load when the command runs
    from ..runner import RunSummary
    from ..services import Services

# The command's modules are imported when it runs: `llmbudget --help` and the other commands
# do not load them at start-up.


def _budget(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        d = Decimal(value.strip().lstrip("$"))
    except InvalidOperation:
        raise ValidationError("--budget", f"must be an amount in USD such as 2.00, got {value!r}") from None
    if not d.is_finite() or d <= 0:
        raise ValidationError("--budget", f"must be a positive amount in USD, got {value!r}")
    if d < NANO_USD:  # spend is counted in nano-USD: a smaller limit would be $0
        raise ValidationError("--budget", f"must be at least $0.000000001, got {value!r}")
    problem = limit_problem(d)
    if problem is not None:
        raise ValidationError("--budget", f"{problem}, got {value!r}")
    return d


def run(
    ctx: typer.Context,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Agent name for the run's calls (default: inferred).")
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="Session id for the run's calls (default: run-<random>).")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option("--budget", help="A hard USD limit for this run; calls past it are refused."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Use the llmbudget serve at this URL (default: server.host:port)."),
    ] = None,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process", help="Always start a proxy in this process (also with a server running)."
        ),
    ] = False,
    config: common.ConfigOpt = None,
    db: common.DbOpt = None,
    json_out: common.JsonOpt = False,
) -> None:
    """Run CMD with its providers pointed at the proxy; print what the run cost; exit with CMD's code.

    Put the command after `--`: `llmbudget run --agent fixer --budget 2.00 -- claude -p "fix the tests"`.
    """
    from .. import runner  # start-up: loaded when the command runs

    cmd = list(ctx.args)
    if not cmd:
        raise ValidationError("CMD", "give the command to run after `--`, e.g. llmbudget run -- claude")
    limit = _budget(budget)
    sid = (session or "").strip() or runner.new_session_id()
    if len(sid) > 200:
        raise ValidationError("--session", "must be at most 200 characters")
    agent = (agent or "").strip() or None
    # both travel in the path of the command's base URLs (so a running server attributes its calls)
    for option, value in (("--session", sid), ("--agent", agent)):
        why = None if value is None else runner.attribution_refusal(value)
        if why is not None:
            raise ValidationError(option, f"{value!r} {why}")
    cfg = common.load(config)
    url = server or runner.server_url(cfg)
    use_server = not in_process and limit is None and runner.probe_server(url)
    if server and not use_server and not in_process and limit is None:
        raise ValidationError("--server", f"no llmbudget serve answers at {server}/healthz")
    started = time.monotonic()
    if use_server:
        # opened before the command starts: opening a ledger (migrations) while the server writes
        # would make the server wait for the lock or spool its batch until later
        _, ledger = common.open_ledger_for(config, db)
        try:
            rc = _run(cmd, url, cfg, agent, sid)
            summary = runner.read_summary(ledger, sid, settle_s=5.0)
        finally:
            ledger.close()
        where = url
    else:
        run_cfg = runner.run_config(cfg, agent=agent, session=sid, budget=limit)
        with runner.in_process_proxy(run_cfg, db) as (base, services):
            rc = _run(cmd, base, cfg, agent, sid)
        summary = _summary_after_close(services, sid)
        where = "in-process proxy"
    _report(summary, time.monotonic() - started, where, limit, json_out)
    raise typer.Exit(rc)


def _run(cmd: list[str], base: str, cfg: Config, agent: str | None, session: str) -> int:
    from .. import runner  # start-up: loaded when the command runs

    env = runner.child_env(base, cfg, agent=agent, session=session, environ=os.environ, program=cmd[0])
    return runner.run_child(runner.child_command(cmd, base, cfg, agent=agent, session=session), env)


def _summary_after_close(services: Services, session: str) -> RunSummary:
    """Read the run back once the in-process proxy has flushed and closed its ledger."""
    from .. import runner  # start-up: loaded when the command runs

    ledger = open_ledger(services.ledger.url) if hasattr(services.ledger, "url") else services.ledger
    try:
        return runner.read_summary(ledger, session)
    finally:
        ledger.close()


def _report(summary: RunSummary, seconds: float, where: str, limit: Decimal | None, json_out: bool) -> None:
    if json_out:
        data = summary.to_dict()
        data["seconds"] = round(seconds, 3)
        data["proxy"] = where
        data["budget_usd"] = None if limit is None else decimal_str(limit)

        common.err_console.print(json.dumps(data), highlight=False, soft_wrap=True, markup=False)
        return
    t = summary.tokens
    out = common.err_console
    calls = f"{summary.calls:,} call" + ("" if summary.calls == 1 else "s")
    blocked = f", {summary.blocked:,} refused by the budget" if summary.blocked else ""
    out.print(
        f"[bold]llmbudget run[/]: session {escape(summary.session)} · {calls}{blocked} · {seconds:.1f} s "
        f"· via {escape(where)}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"  tokens: input {t['input_tokens']:,} (cached {t['cached_input_tokens']:,}, cache write "
        f"{t['cache_write_tokens']:,}) · output {t['output_tokens']:,} (reasoning {t['reasoning_tokens']:,})",
        highlight=False,
        soft_wrap=True,
    )
    cost = format_usd(summary.cost_usd)
    unpriced = f" + {summary.unpriced:,} unpriced" if summary.unpriced else ""
    budget = f" of the run's {format_usd(limit, 2)} budget" if limit is not None else ""
    out.print(f"  cost: {cost}{unpriced}{budget}", highlight=False, soft_wrap=True)
    for model, (n, c, u) in sorted(summary.models.items()):
        money = "unpriced" if u == n else format_usd(c) + (f" + {u} unpriced" if u else "")
        out.print(f"    {escape(model)}: {n:,} call{'s' if n != 1 else ''}, {money}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command(
        "run",
        context_settings={"allow_extra_args": True},
    )(run)
