"""`llmbudget import codex [PATH...]` and `import claude-code|codex --watch`: agents' own logs."""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape

from ..money import decimal_str, format_usd
from . import common


def import_codex_command(
    paths: list[str] | None, *, json_out: bool = False, config: str | None = None, db: str | None = None
) -> None:
    """`llmbudget import codex [PATH...]`: Codex CLI's session logs into the ledger."""
    from ..pricing import PriceBook
    from ..quota import codex
    from ..quota.report import collect_warnings

    cfg, ledger = common.open_ledger_for(config, db)
    try:
        with collect_warnings("llmbudget.quota"):  # the result lists them; printed once, below
            res = codex.import_codex(ledger, paths or None, PriceBook.from_config(cfg))
    finally:
        ledger.close()
    if json_out:
        common.print_json(res.to_dict())
        return
    for w in res.warnings:
        common.err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    unpriced = f", {res.unpriced} unpriced (see `llmbudget prices --missing`)" if res.unpriced else ""
    proxied = f"; skipped {res.proxied} calls already metered by the proxy" if res.proxied else ""
    common.console.print(
        f"Imported {res.new} new Codex calls ({res.calls - res.new} already imported) from {res.files} "
        f"files: {res.sessions} sessions, {format_usd(res.cost_usd, 2)}{unpriced}{proxied}; "
        f"{len(res.warnings)} unreadable lines.",
        highlight=False,
        soft_wrap=True,
    )


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
    from ..errors import ValidationError
    from ..pricing import PriceBook
    from ..quota import live_import as li
    from ..quota.report import collect_warnings

    if not 0.05 <= interval_s <= 3600:
        raise ValidationError("--interval", f"must be between 0.05 and 3600 seconds, got {interval_s}")
    roots = li.roots_for(source, paths)
    cfg, ledger = common.open_ledger_for(config, db)
    prices = PriceBook.from_config(cfg)
    watcher: Any = (
        li.CodexWatcher(ledger, prices, roots)
        if source == "codex"
        else li.ClaudeCodeWatcher(ledger, prices, roots, settle_s=max(2.0, interval_s))
    )
    label = "Codex calls" if source == "codex" else "Claude Code responses"
    totals = li.Batch()
    started = time.monotonic()

    def on_batch(b: li.Batch) -> None:
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
            li.watch(watcher, interval_s=interval_s, on_batch=on_batch)
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
