"""`llmbudget import claude-code|codex [PATH...]`, with `--watch` to follow: agents' own logs.

Both sources run the same steps (open the ledger, import or follow through
`llmbudget.quota.agentlogs`, print); what differs is the summary line each prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.markup import escape

from ..errors import ValidationError
from ..money import decimal_str, format_usd
from ..pricing import PriceBook
from ..quota import agentlogs, claude_code, codex
from ..quota.report import collect_warnings
from . import common

#: the agents whose logs `import` reads: source name -> their logs
SOURCES: dict[str, agentlogs.AgentLogs[Any, Any]] = {
    claude_code.CLAUDE_CODE.name: claude_code.CLAUDE_CODE,
    codex.CODEX.name: codex.CODEX,
}
#: what one call is called in the output
_CALLS = {"claude-code": "Claude Code responses", "codex": "Codex calls"}


def _claude_code_summary(res: claude_code.ImportResult) -> str:
    unpriced = f", {res.unpriced} unpriced (see `llmbudget prices --missing`)" if res.unpriced else ""
    return (
        f"Imported {res.new} new Claude Code responses ({res.already_imported} already imported) from "
        f"{res.files} files: {res.sessions} sessions in {len(res.projects)} projects, "
        f"{format_usd(res.cost_usd, 2)}{unpriced}. Merged {res.duplicates} repeated lines, "
        f"skipped {res.synthetic} synthetic and {len(res.warnings)} unreadable lines."
    )


def _codex_summary(res: codex.CodexImportResult) -> str:
    unpriced = f", {res.unpriced} unpriced (see `llmbudget prices --missing`)" if res.unpriced else ""
    proxied = f"; skipped {res.proxied} calls already metered by the proxy" if res.proxied else ""
    return (
        f"Imported {res.new} new Codex calls ({res.calls - res.new} already imported) from {res.files} "
        f"files: {res.sessions} sessions, {format_usd(res.cost_usd, 2)}{unpriced}{proxied}; "
        f"{len(res.warnings)} unreadable lines."
    )


#: source name -> (import function, summary line)
_IMPORTS: dict[str, tuple[Callable[[Any, Any, Any], Any], Callable[[Any], str]]] = {
    "claude-code": (claude_code.import_claude_code, _claude_code_summary),
    "codex": (codex.import_codex, _codex_summary),
}


def import_command(
    source: str,
    paths: list[str] | None,
    *,
    json_out: bool = False,
    config: str | None = None,
    db: str | None = None,
) -> None:
    """`llmbudget import claude-code|codex [PATH...]`: an agent's logs into the ledger, once."""
    run, summary = _IMPORTS[source]
    cfg, ledger = common.open_ledger_for(config, db)
    try:
        with collect_warnings("llmbudget.quota"):  # the result lists them; printed once, below
            res = run(ledger, paths or None, PriceBook.from_config(cfg))
        common.reconcile_budgets(cfg, ledger)
    finally:
        ledger.close()
    if json_out:
        common.print_json(res.to_dict())
        return
    for w in res.warnings:
        common.err_console.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)
    common.console.print(summary(res), highlight=False, soft_wrap=True)


def watch_command(
    source: str,
    paths: list[str] | None,
    *,
    interval_s: float,
    json_out: bool = False,
    config: str | None = None,
    db: str | None = None,
) -> None:
    """Follow `source`'s logs until Ctrl-C, recording usage as it is written."""
    if not 0.05 <= interval_s <= 3600:
        raise ValidationError("--interval", f"must be between 0.05 and 3600 seconds, got {interval_s}")
    logs = SOURCES[source]
    roots = logs.roots(paths)
    cfg, ledger = common.open_ledger_for(config, db)
    watcher = logs.watcher(ledger, PriceBook.from_config(cfg), roots, settle_s=max(2.0, interval_s))
    label = _CALLS[source]
    totals = agentlogs.Batch()
    started = time.monotonic()

    def on_batch(b: agentlogs.Batch) -> None:
        for w in b.warnings:
            common.err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
        totals.new += b.new
        totals.cost_usd += b.cost_usd
        totals.sessions |= b.sessions
        if json_out:
            common.print_json(
                {
                    "new": b.new,
                    "seen": b.seen,
                    "cost_usd": decimal_str(b.cost_usd),
                    "sessions": sorted(b.sessions),
                }
            )
            return
        if b.seen:
            unpriced = f" + {b.unpriced} unpriced" if b.unpriced else ""
            common.console.print(
                f"{time.strftime('%H:%M:%S')} +{b.new} {label} ({b.seen - b.new} already in the ledger), "
                f"{format_usd(b.cost_usd, 4)}{unpriced}",
                highlight=False,
                soft_wrap=True,
            )

    where = ", ".join(str(r) for r in roots)
    common.err_console.print(
        f"Following {escape(where)} every {interval_s:g} s; Ctrl-C stops.", highlight=False, soft_wrap=True
    )
    try:
        with collect_warnings("llmbudget.quota"):
            agentlogs.watch(watcher, interval_s=interval_s, on_batch=on_batch)
    except KeyboardInterrupt:
        pass
    finally:
        ledger.close()
    common.err_console.print(
        f"Stopped after {time.monotonic() - started:.0f} s: {totals.new} new {label}, "
        f"{format_usd(totals.cost_usd, 4)}, {len(totals.sessions)} sessions.",
        highlight=False,
        soft_wrap=True,
    )
