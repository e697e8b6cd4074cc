"""The `llmbudget analyze` report: quota analysis over the readings, 5-hour blocks, pruning.

`analyze_report()` gathers what `llmbudget analyze --json` prints from the ledger (or the readings
log, or Claude Code logs); the CLI parses options, calls it and renders the result. The analysis
itself is the pure functions of `llmbudget.quota.analysis` and `llmbudget.quota.blocks`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from ..config import Config
from ..pricing import PriceBook
from ..store import Ledger
from . import analysis as an
from . import blocks as bl
from . import claude_code as cc
from . import codex
from . import readings_log as rdg
from .prune import prune_readings
from .readings import QuotaReading
from .settings import ProviderConfig
from .weekly import weekly

#: the report's sections, in the order they are shown
SECTIONS = ("burn_rate", "weekly", "stagger", "rotation", "underspend", "blocks")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def collect_warnings(*loggers: str) -> Iterator[list[str]]:
    """Gather warnings logged by the library (e.g. a corrupted JSONL line) so the CLI can show them."""
    handler = _Collect()
    targets = [logging.getLogger(name) for name in loggers]
    saved = [(lg, lg.propagate) for lg in targets]
    for lg in targets:
        lg.addHandler(handler)
        lg.propagate = False  # shown once, by us, not again by the root handler
    try:
        yield handler.messages
    finally:
        for lg, prop in saved:
            lg.removeHandler(handler)
            lg.propagate = prop


def analyze_report(
    cfg: Config,
    ledger: Ledger,
    *,
    sections: Iterable[str],
    start: datetime,
    now: datetime,
    provider: str | None = None,
    from_log: bool = False,
    logs: list[str] | None = None,
    prune_before: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The analyze report's sections since `start`, warnings included; with `prune_before`, readings older
    than it are archived and deleted (listed only, with `dry_run`)."""
    chosen = set(sections)
    out: dict[str, Any] = {"now": an.iso_utc(now), "since": an.iso_utc(start), "provider": provider}
    warnings: list[str] = []
    if chosen - {"blocks"}:
        with collect_warnings("llmbudget.quota") as caught:
            if from_log:
                readings = rdg.read_log(since=start, until=now + timedelta(seconds=1))
            else:
                readings = _ledger_readings(ledger, start)
        warnings.extend(caught)
        everything = readings
        readings = an.filter_provider(readings, provider)
        out["readings"] = len(readings)
        if provider is not None and not readings:
            known = sorted({r.backend for r in everything} | {_account_name(p) for p in cfg.providers})
            warnings.append(
                f"no readings of an account or kind named {provider!r} since {an.iso_utc(start)}"
                + (f"; accounts: {', '.join(known)}" if known else "")
            )
        if "burn_rate" in chosen:
            out["burn_rate"] = [r.to_dict() for r in an.burn_rates(readings, now=now)]
        if "weekly" in chosen:
            out["weekly"] = [r.to_dict() for r in weekly(readings)]
        if "stagger" in chosen:
            out["stagger"] = [r.to_dict() for r in an.stagger(readings, now=now)]
        if "rotation" in chosen:
            accounts = [_account_name(p) for p in cfg.providers]
            if provider is not None:
                accounts = [a for a in accounts if a == provider]
            out["rotation"] = an.rotation(readings, now=now, accounts=accounts, warn_at=cfg.quota.warn_at)
        if "underspend" in chosen:
            out["underspend"] = [r.to_dict() for r in an.underspend(readings, now=now)]
    if "blocks" in chosen:
        out["blocks"] = _blocks(ledger, cfg, start, now, logs, warnings)
        if not logs:
            out["codex_blocks"] = _codex_blocks(ledger, start, now)
    if prune_before is not None:
        log_dir = rdg.default_log_dir()
        res = prune_readings(
            ledger,
            before=prune_before,
            log_dir=log_dir,
            archive_dir=log_dir / "archive",
            now=now,
            dry_run=dry_run,
        )
        out["prune"] = res.to_dict()
    out["warnings"] = warnings
    return out


def _account_name(p: ProviderConfig | dict[str, object]) -> str:
    """A configured provider's name (a ProviderConfig, or a plain mapping in older configs)."""
    return str(p.get("name") if isinstance(p, dict) else p.name)


def _ledger_readings(ledger: Ledger, since: datetime) -> list[QuotaReading]:
    out = []
    for d in ledger.readings(since=since):
        try:
            out.append(QuotaReading.from_dict(d))
        except (ValueError, TypeError) as e:
            logging.getLogger("llmbudget.quota").warning(
                "skipping a stored reading backend=%s timestamp=%s error=%s",
                d.get("backend"),
                d.get("timestamp"),
                e,
            )
    return out


def _blocks(
    ledger: Ledger, cfg: Config, start: datetime, now: datetime, logs: list[str] | None, warnings: list[str]
) -> list[bl.BlockDict]:
    if logs:
        with collect_warnings("llmbudget.quota"):  # the scan lists them; printed once, by the CLI
            events, scan = cc.load_events(logs, PriceBook.from_config(cfg))
        warnings.extend(scan.warnings)
        events = [e for e in events if e.timestamp >= start]
    else:
        # imported responses and Claude Code's calls through the proxy (one event when both saw it)
        events = list(ledger.iter_events(since=start, filters={"agent": cc.AGENT}))
    return [b.to_dict() for b in bl.identify_blocks(events, now=now)]


def _codex_blocks(ledger: Ledger, start: datetime, now: datetime) -> list[bl.BlockDict]:
    """Codex's calls (imported or through the proxy) in the same 5-hour blocks."""
    events = list(ledger.iter_events(since=start, filters={"agent": codex.AGENT}))
    return [b.to_dict() for b in bl.identify_blocks(events, now=now)]
