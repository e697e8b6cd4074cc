"""The JSON API: `/api/costs`, `/api/events`, `/api/sessions`, and the routes of every `web/api_*.py` module.

Each report endpoint answers with exactly the dict the CLI prints for `--json` (built by
`llmbudget.reports`), and takes the CLI's options as query parameters:

    GET /api/costs?since=7d&by=agent&backend=openai
    GET /api/events?limit=20&agent=planner&status=error
    GET /api/sessions?limit=10&since=this%20week

Unknown or repeated parameters are a 400, like a typo on the command line. Errors use the
one shape of `llmbudget.web.errors`.

Adding routes from another module: create `llmbudget/web/api_<name>.py` with a function
`routes(services) -> list[starlette.routing.BaseRoute]` and add the module to `ROUTE_MODULES`
below; `api_routes()` appends their routes, in that order, after the report routes
(`tests/test_api.py` fails when an `api_*.py` module is missing from the list).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import reports
from ..errors import ValidationError
from ..services import Services
from . import api_budget, api_dashboard, api_keys, api_live, api_metrics, api_quota, openapi
from .errors import install_error_handlers
from .params import query_params
from .reportpool import report_pool

__all__ = ["MAX_LIMIT", "ROUTE_MODULES", "api_routes", "install_error_handlers"]

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
    run_report = report_pool(services).report_json  # a few at a time, in worker processes

    async def costs(request: Request) -> Response:
        p = query_params(request, _RANGE | _FILTERS | {"by", "limit"})
        limit = _optional_limit(p)
        filters = _filters(p)
        data = await run_report(
            reports.costs_report,
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
        return Response(data, media_type="application/json")

    async def events(request: Request) -> Response:
        p = query_params(request, _RANGE | _FILTERS | {"limit"})
        limit = _limit(p, reports.DEFAULT_EVENTS_LIMIT)
        filters = _filters(p)
        data = await run_report(
            reports.events_report,
            zone=zone,
            since=p.get("since"),
            until=p.get("until"),
            filters=filters,
            limit=limit,
            since_option="since",
            until_option="until",
        )
        return Response(data, media_type="application/json")

    async def sessions(request: Request) -> Response:
        p = query_params(request, frozenset({"since", "limit"}))
        limit = _limit(p, reports.DEFAULT_SESSIONS_LIMIT)
        data = await run_report(
            reports.sessions_report,
            zone=zone,
            since=p.get("since"),
            limit=limit,
            since_option="since",
        )
        return Response(data, media_type="application/json")

    return [
        Route("/api/costs", costs, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/sessions", sessions, methods=["GET"]),
    ]


#: the modules whose `routes(services)` follow the report routes, in this order
ROUTE_MODULES = (api_budget, api_dashboard, api_keys, api_live, api_metrics, api_quota)


def api_routes(services: Services) -> list[BaseRoute]:
    """Every JSON API route: the reports here, then each of `ROUTE_MODULES`' `routes(services)`."""
    routes = _report_routes(services)
    for module in ROUTE_MODULES:
        routes.extend(module.routes(services))
    routes.extend(openapi.routes())  # /openapi.json describes every /api route above
    return routes
