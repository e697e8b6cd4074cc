"""Quota JSON API: `GET /api/quota` (latest reading per backend/account, with severity) and
`GET /api/quota/summary` (the `llmbudget summary` block; `?max_age=20m`, `?probe=false`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..quota.probe import ProbeSession
from ..quota.readings_log import latest_by_backend
from ..quota.severity import WARN_AT, assess, overall
from ..quota.summary import DEFAULT_MAX_AGE, build_summary_async, parse_max_age
from ..services import Services
from .params import flag, query_params


def quota_latest(ledger: Any, now: datetime | None = None, *, warn_at: float = WARN_AT) -> dict[str, Any]:
    """The newest reading per backend/account with its severity (what `GET /api/quota` answers)."""
    now = now or datetime.now(UTC)
    latest = latest_by_backend(ledger.latest_readings())
    rows = []
    severities = []
    for name in sorted(latest):
        r = latest[name]
        a = assess(r, now=now, warn_at=warn_at)
        severities.append(a.severity)
        rows.append({"backend": name, **a.to_dict(), "mark": a.severity.mark, "reading": r.to_dict()})
    return {"generated_at": now.isoformat(), "backends": rows, "overall": overall(severities)}


def routes(services: Services) -> list[BaseRoute]:
    """The quota routes, collected by `web/api.py`."""

    async def quota(request: Request) -> JSONResponse:
        query_params(request, set())
        return JSONResponse(
            await run_in_threadpool(quota_latest, services.ledger, warn_at=services.config.quota.warn_at)
        )

    if services.probe_session is None:  # routes served without the app (its lifespan closes it)
        services.probe_session = ProbeSession()
    probes = services.probe_session

    async def quota_summary(request: Request) -> JSONResponse:
        params = query_params(request, {"max_age", "probe"})
        age = parse_max_age(params["max_age"]) if params.get("max_age") else DEFAULT_MAX_AGE
        probe = flag(params, "probe", default=True)
        # on the server's event loop and its one probe session; the ledger's steps go to a thread
        s = await build_summary_async(
            services.config, services.ledger, max_age=age, probe=probe, session=probes.get()
        )
        return JSONResponse(s.to_dict())

    return [Route("/api/quota", quota), Route("/api/quota/summary", quota_summary)]
