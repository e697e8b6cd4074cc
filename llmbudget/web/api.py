"""The JSON API: `/api/costs`, `/api/events`, `/api/sessions`, and the routes of every `web/api_*.py` module.

Each report endpoint answers with exactly the dict the CLI prints for `--json` (built by
`llmbudget.reports`), and takes the CLI's options as query parameters:

    GET /api/costs?since=7d&by=agent&backend=openai
    GET /api/events?limit=20&agent=planner&status=error
    GET /api/sessions?limit=10&since=this%20week

Unknown or repeated parameters are a 400, like a typo on the command line. Errors use the
one shape of `llmbudget.web.errors`.

Adding routes from another module: create `llmbudget/web/api_<name>.py` with a function
`routes(services) -> list[starlette.routing.BaseRoute]`. `api_routes()` finds every such
module in this package (sorted by name) and appends its routes after the report routes;
nothing else needs editing. A module that fails to import fails the app's start-up loudly.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from .. import reports
from ..errors import ValidationError
from ..services import Services
from . import openapi
from .errors import install_error_handlers
from .params import query_params
from .reportpool import report_pool

__all__ = ["MAX_LIMIT", "api_routes", "extension_modules", "install_error_handlers"]

log = logging.getLogger(__name__)

#: the most rows one API call returns (use `llmbudget export` for everything)
MAX_LIMIT = 10_000

_RANGE = frozenset({"since", "until"})
_FILTERS = frozenset(reports.FILTER_NAMES)


def _optional_limit(params: dict[str, str]) -> int | None:
    """`limit` from the query, None when absent; a 400 naming it when not a whole number in range."""
    raw = params.get("limit")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError("limit", f"must be a positive whole number, got {raw!r}") from None
    return reports.check_limit(value, option="limit", maximum=MAX_LIMIT)


def _limit(params: dict[str, str], default: int) -> int:
    value = _optional_limit(params)
    return default if value is None else value


def _filters(params: dict[str, str]) -> dict[str, str]:
    return reports.build_filters({k: v for k, v in params.items() if k in _FILTERS}, prefix="")


def _report_routes(services: Services) -> list[BaseRoute]:
    zone = services.config.zone()
    ledger = services.ledger
    run_report = report_pool(services).run  # a few at a time, off the proxy's event loop

    async def costs(request: Request) -> JSONResponse:
        p = query_params(request, _RANGE | _FILTERS | {"by", "limit"})
        limit = _optional_limit(p)
        filters = _filters(p)
        data = await run_report(
            reports.costs_report,
            ledger,
            zone=zone,
            since=p.get("since"),
            until=p.get("until"),
            by=p.get("by"),
            filters=filters,
            limit=limit,
            since_option="since",
            until_option="until",
            by_option="by",
        )
        return JSONResponse(data)

    async def events(request: Request) -> JSONResponse:
        p = query_params(request, _RANGE | _FILTERS | {"limit"})
        limit = _limit(p, reports.DEFAULT_EVENTS_LIMIT)
        filters = _filters(p)
        data = await run_report(
            reports.events_report,
            ledger,
            zone=zone,
            since=p.get("since"),
            until=p.get("until"),
            filters=filters,
            limit=limit,
            since_option="since",
            until_option="until",
        )
        return JSONResponse(data)

    async def sessions(request: Request) -> JSONResponse:
        p = query_params(request, frozenset({"since", "limit"}))
        limit = _limit(p, reports.DEFAULT_SESSIONS_LIMIT)
        data = await run_report(
            reports.sessions_report,
            ledger,
            zone=zone,
            since=p.get("since"),
            limit=limit,
            since_option="since",
        )
        return JSONResponse(data)

    return [
        Route("/api/costs", costs, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/sessions", sessions, methods=["GET"]),
    ]


def extension_modules() -> list[str]:
    """Names of the `llmbudget.web.api_*` modules whose routes `api_routes()` collects, sorted."""
    from .. import web

    return sorted(
        f"{web.__name__}.{m.name}"
        for m in pkgutil.iter_modules(web.__path__)
        if m.name.startswith("api_") and not m.ispkg
    )


def api_routes(services: Services) -> list[BaseRoute]:
    """Every JSON API route: the reports here, then each `web/api_*.py` module's `routes(services)`."""
    routes = _report_routes(services)
    for name in extension_modules():
        module = importlib.import_module(name)
        factory: Callable[[Services], list[Any]] | None = getattr(module, "routes", None)
        if factory is None:
            log.warning("api module has no routes(services) function module=%s", name)
            continue
        routes.extend(factory(services))
    routes.extend(openapi.routes())  # /openapi.json describes every /api route above
    return routes
