"""Probe every account at once, each cut at its own timeout; one account's failure never hides the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp

from ..errors import LLMBudgetError
from .providers import get_provider
from .providers.base import MissingKey, unknown
from .readings import QuotaReading
from .settings import ProviderConfig

log = logging.getLogger("llmbudget.quota")


def _secs(t: float) -> str:
    return f"{t:g}"


async def probe_account(account: ProviderConfig, session: aiohttp.ClientSession) -> list[QuotaReading]:
    """Run one account's probe; every failure becomes an UNKNOWN reading with the reason."""
    try:
        plugin = get_provider(account.kind)
    except LLMBudgetError as e:
        return [unknown(account, str(e))]
    try:
        readings = await asyncio.wait_for(plugin.probe(account, session), timeout=account.probe_timeout_s)
    except TimeoutError:
        log.info("quota probe timed out account=%s timeout_s=%s", account.name, account.probe_timeout_s)
        return [unknown(account, f"timed out after {_secs(account.probe_timeout_s)}s")]
    except MissingKey as e:
        return [unknown(account, str(e))]
    except aiohttp.ClientError as e:
        # the message names host and port, never a header
        return [unknown(account, f"connection failed: {type(e).__name__}: {str(e)[:160]}")]
    except Exception as e:  # a plugin bug is that account's UNKNOWN, not a crash of the monitor
        log.warning(
            "quota probe failed account=%s kind=%s error=%s", account.name, account.kind, type(e).__name__
        )
        return [unknown(account, f"probe failed: {type(e).__name__}: {str(e)[:160]}")]
    if not readings:
        return [unknown(account, "the probe returned no reading")]
    for r in readings:
        # the config's name and kind are authoritative, whatever a plugin filled in
        r.backend = account.name
        r.source = "probe"
        if r.provider in ("", "unknown"):
            r.provider = account.kind
    return readings


def new_session() -> aiohttp.ClientSession:
    """An HTTP session for probes (on the running event loop): no connection limit, no proxy from the environment."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False)


class ProbeSession:
    """One probe session for a long-lived process (the server): opened on first use on the running
    event loop, reused by every probe after it, closed by `close()` (the app's lifespan)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: sessions opened so far (a new one only when the last was closed or its loop ended)
        self.opened = 0

    def get(self) -> aiohttp.ClientSession:
        """The session, opened now when there is none on the running loop."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session, self._loop = new_session(), loop
            self.opened += 1
        return self._session

    async def close(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()


async def probe_all(
    accounts: Sequence[ProviderConfig], *, session: aiohttp.ClientSession | None = None
) -> list[QuotaReading]:
    """Probe all accounts concurrently; results in the order of `accounts`.

    On `session` when given (left open), else on a session of its own, closed before returning.
    """
    if not accounts:
        return []
    own = session is None
    if session is None:
        session = new_session()
    try:
        groups = await asyncio.gather(*(probe_account(a, session) for a in accounts))
    finally:
        if own:
            await session.close()
    return [r for g in groups for r in g]


def probe_all_sync(accounts: Sequence[ProviderConfig]) -> list[QuotaReading]:
    """`probe_all` for synchronous callers (the CLI)."""
    return asyncio.run(probe_all(accounts))
