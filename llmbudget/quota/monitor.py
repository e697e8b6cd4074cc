"""`llmbudget monitor`: probe every account, assess each reading, store them all."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

from ..config import Config
from ..errors import ConfigError, StorageError
from ..store.base import Ledger
from .probe import probe_all_sync
from .readings import QuotaReading, ReadingDict
from .readings_log import store_reading
from .settings import ProviderConfig
from .severity import Assessment, AssessmentDict, Severity, assess, overall

log = logging.getLogger("llmbudget.quota")


class AccountStatusDict(AssessmentDict):
    account: str
    kind: str
    reading: ReadingDict


class MonitorDict(TypedDict):
    """What `llmbudget quota --json` prints."""

    accounts: list[AccountStatusDict]
    counts: dict[str, int]
    overall: str
    storage_errors: list[str]


@dataclass(slots=True)
class AccountStatus:
    reading: QuotaReading
    assessment: Assessment

    def to_dict(self) -> AccountStatusDict:
        return {
            "account": self.reading.backend,
            "kind": self.reading.provider,
            **self.assessment.to_dict(),
            "reading": self.reading.to_dict(),
        }


@dataclass(slots=True)
class MonitorResult:
    accounts: list[AccountStatus] = field(default_factory=list)
    #: readings that could not be stored (the reason), so the report still prints
    storage_errors: list[str] = field(default_factory=list)

    @property
    def overall(self) -> str:
        return overall(a.assessment.severity for a in self.accounts)

    @property
    def any_critical(self) -> bool:
        return any(a.assessment.severity is Severity.CRITICAL for a in self.accounts)

    def to_dict(self) -> MonitorDict:
        counts = {s.value: 0 for s in Severity}
        for a in self.accounts:
            counts[a.assessment.severity.value] += 1
        return {
            "accounts": [a.to_dict() for a in self.accounts],
            "counts": counts,
            "overall": self.overall,
            "storage_errors": list(self.storage_errors),
        }


def select_accounts(cfg: Config, names: list[str] | None = None) -> list[ProviderConfig]:
    """The configured accounts, or the named ones; an unknown name is an error listing the configured ones."""
    accounts = list(cfg.providers)
    if not accounts:
        raise ConfigError(
            "no providers configured: add a `providers:` section (README, 'Quota watch')",
            path=cfg.source_path,
        )
    if not names:
        return accounts
    by_name = {a.name: a for a in accounts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(
            f"no provider named {', '.join(missing)}; configured: {', '.join(by_name)}", path=cfg.source_path
        )
    return [by_name[n] for n in names]


def run_monitor(
    cfg: Config,
    *,
    ledger: Ledger | None = None,
    names: list[str] | None = None,
    log_readings: bool = True,
    log_dir: Path | None = None,
    now: datetime | None = None,
) -> MonitorResult:
    """Probe the accounts concurrently, assess and (unless `log_readings` is False) store every reading."""
    accounts = select_accounts(cfg, names)
    readings = probe_all_sync(accounts)
    result = MonitorResult()
    when = now or datetime.now(UTC)
    for r in readings:
        result.accounts.append(AccountStatus(r, assess(r, now=when, warn_at=cfg.quota.warn_at)))
        if log_readings:
            try:
                store_reading(ledger, r, log_dir=log_dir)
            except (StorageError, OSError) as e:
                result.storage_errors.append(f"{r.backend}: {e}")
                # the result carries it and the CLI shows it once
                log.info("quota reading not stored account=%s error=%s", r.backend, e)
    return result
