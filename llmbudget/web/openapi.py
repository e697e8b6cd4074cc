"""`/openapi.json`: the JSON API described from one table, checked against the live routes.

The document is built from the app's own routes at request time, so every `/api` route is in it;
what each one takes comes from `OPERATIONS` below (a route missing there is published with its
path parameters only and `x-undocumented: true`). `tests/test_openapi.py` keeps the table true:
every live `/api` route is in it, and each GET route's query parameters are exactly the ones the
route itself accepts (asked from the route: an unknown parameter's 400 lists them). The suite runs
schemathesis against the published document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from .. import __version__, reports

#: the attribution filters every report takes (the report module's own list of names)
_FILTERS = tuple(sorted(reports.FILTER_NAMES))

#: query parameter name -> its JSON schema (one place: the same name means the same thing everywhere)
PARAMS: dict[str, dict[str, Any]] = {
    "since": {
        "type": "string",
        "description": "a date, month, date and time, duration (7d) or period (this week)",
    },
    "until": {"type": "string", "description": "as since; a date means through the end of that day"},
    "by": {
        "type": "string",
        "description": reports.BY_HELP,
    },
    "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
    "kind": {"type": "string"},
    "utilization": {"type": "boolean"},
    "max_age": {"type": "string", "description": "reuse readings younger than this (20m)"},
    "probe": {"type": "boolean"},
    **{name: {"type": "string"} for name in _FILTERS},
}


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers."""

    summary: str
    query: tuple[str, ...] = ()
    #: a JSON object body (its properties), None when the route reads no body
    body: dict[str, Any] | None = None
    content_type: str = "application/json"
    #: error statuses the route answers besides 400/404/405/415/500/503
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = field(default=())


_REPORT = ("since", "until", *_FILTERS)

#: (METHOD, path template) -> operation
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/api/costs"): Operation(
        "Costs: overview, or grouped by a dimension or time bucket", (*_REPORT, "by", "limit")
    ),
    ("GET", "/api/events"): Operation("Events, newest first", (*_REPORT, "limit")),
    ("GET", "/api/sessions"): Operation("Sessions, most recent first", ("since", "limit")),
    ("GET", "/api/budgets"): Operation("Budgets: spend, limits, forecast", ("utilization",)),
    ("GET", "/api/notifications"): Operation("Budget and quota notifications", ("limit", "kind")),
    ("POST", "/api/agents/{name}/pause"): Operation("Pause an agent", body={"reason": {"type": "string"}}),
    ("POST", "/api/agents/{name}/resume"): Operation("Resume a paused agent"),
    ("GET", "/api/quota"): Operation("Latest quota reading per backend"),
    ("GET", "/api/quota/summary"): Operation("The compact quota summary for agents", ("max_age", "probe")),
    ("GET", "/api/live"): Operation(
        "Server-sent increments for the dashboard", content_type="text/event-stream"
    ),
    ("GET", "/api/overview"): Operation("The dashboard overview"),
    ("GET", "/api/agents"): Operation("Agent cards"),
    ("GET", "/api/agents/{name}"): Operation("One agent"),
    ("GET", "/api/dashboard/sessions"): Operation("Session history for the dashboard"),
    ("GET", "/api/dashboard/sessions.csv"): Operation("Session history as CSV", content_type="text/csv"),
    ("GET", "/api/sessions/{id}"): Operation("One session"),
    ("POST", "/api/sessions/{id}/end"): Operation(
        "End a session", body={"reason": {"type": "string", "maxLength": 200}}
    ),
    ("GET", "/api/events/{id}/explain"): Operation("How one event's cost was computed"),
    ("GET", "/api/charts/{name}"): Operation("A chart as SVG data"),
    ("GET", "/api/enforcement"): Operation("Enforcement health: reserved, settled, refusals"),
    ("GET", "/api/thresholds"): Operation("Dashboard alert thresholds"),
    ("POST", "/api/thresholds"): Operation(
        "Set an alert threshold",
        body={
            "scope": {"type": "string"},
            "agent": {"type": "string"},
            "limit_usd": {"type": ["string", "number"]},
            "auto_pause": {"type": "boolean"},
        },
    ),
    ("DELETE", "/api/thresholds/{scope}/{agent}"): Operation("Remove an alert threshold"),
    ("GET", "/api/keys"): Operation("Virtual keys (never a secret)"),
    ("POST", "/api/keys"): Operation(
        "Create a virtual key; the answer holds its secret, once",
        body={
            "name": {"type": "string"},
            "agent": {"type": "string"},
            "team": {"type": "string"},
            "user": {"type": "string"},
            "backends": {"type": ["array", "null"], "items": {"type": "string"}},
            "expires": {"type": "string", "description": "30d, 12h, 2w or a date"},
        },
    ),
    ("POST", "/api/keys/{name}/revoke"): Operation("Revoke a virtual key"),
}

_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_ERROR = {"$ref": "#/components/schemas/Error"}


def api_operations(routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """(METHOD, path) of every `/api` route in `routes` (HEAD left out), in route order."""
    out = []
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/api"):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    out.append((method, route.path))
    return out


def _operation(method: str, path: str, op: Operation | None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _PATH_PARAM.findall(path)
    ]
    if op is not None:
        params += [
            {"name": n, "in": "query", "required": False, "schema": PARAMS.get(n, {"type": "string"})}
            for n in op.query
        ]
    ctype = op.content_type if op else "application/json"
    ok_schema: dict[str, Any] = {"type": "object"} if ctype == "application/json" else {"type": "string"}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {ctype: {"schema": ok_schema}}}}
    for status in (400, 403, 404, 405, 413, 415, 500, 503, *(op.errors if op else ())):
        responses[str(status)] = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    out: dict[str, Any] = {
        "summary": op.summary if op else f"{method} {path}",
        "operationId": f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "parameters": params,
        "responses": responses,
    }
    if op is not None and op.body is not None:
        out["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object", "properties": op.body}}},
        }
    if op is None:
        out["x-undocumented"] = True
    return out


def build_spec(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every `/api` route in `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path in api_operations(routes):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, OPERATIONS.get((method, path)))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llmbudget JSON API",
            "version": __version__,
            "description": "Reports, budgets, quota and the dashboard's data. Errors have one shape.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "status"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "status": {"type": "integer"},
                                "field": {"type": "string"},
                            },
                        }
                    },
                }
            }
        },
    }


async def openapi_json(request: Request) -> JSONResponse:
    """`GET /openapi.json`."""
    return JSONResponse(build_spec(list(request.app.routes)))


def routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi_json, methods=["GET"])]
