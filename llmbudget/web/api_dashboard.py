"""Dashboard JSON API: what each page shows, as JSON.

GET    /api/overview                      totals, forecast, budgets, agent cards, notifications, quota
GET    /api/agents                        agent cards
GET    /api/agents/{name}                 one agent card (`html`: the card as the page renders it)
GET    /api/dashboard/sessions            the last 30 sessions (CSV: /api/dashboard/sessions.csv)
GET    /api/sessions/{id}                 one session with its per-agent breakdown
POST   /api/sessions/{id}/end             end a session now (JSON body, may be `{}`)
GET    /api/events/{id}/explain           tokens by kind × price in force, and the price's source
GET    /api/charts/{name}                 daily | models | agents | tiers | hourly
GET    /api/enforcement                   budgets with forecast, enforcement health, refusals
GET    /api/thresholds                    alert thresholds per session and per agent
POST   /api/thresholds                    {"scope": "session"|"agent", "agent": "*"|name, "limit_usd": "1.00", "auto_pause": false}
DELETE /api/thresholds/{scope}/{agent}
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..errors import NotFound, ValidationError
from ..events import utcnow
from ..money import to_nano
from ..services import Services
from ..store.dashboard import (
    THRESHOLD_SCOPES,
    Threshold,
    delete_threshold,
    end_session,
    list_thresholds,
    session_exists,
)
from ..store.dashboard import set_threshold as store_threshold
from . import charts
from .dashboard import card_html
from .data import agents as agent_data
from .data import budgets as budget_data
from .data import events as event_data
from .data import overview as overview_data
from .data import sessions as session_data
from .params import query_params


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is `{}`); a 400/415 naming the problem otherwise."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if raw.strip() and ctype != "application/json":
        raise ValidationError("content-type", "must be application/json")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationError("body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    return body


#: the largest threshold (its nano-USD still fits a 64-bit integer with room to spare)
MAX_THRESHOLD_USD = 1_000_000_000


def _threshold_from(body: dict[str, Any]) -> Threshold:
    unknown = set(body) - {"scope", "agent", "limit_usd", "auto_pause"}
    if unknown:
        raise ValidationError(
            sorted(unknown)[0], "unknown field; accepted: scope, agent, limit_usd, auto_pause"
        )
    scope = body.get("scope")
    if scope not in THRESHOLD_SCOPES:
        raise ValidationError("scope", f"must be one of {', '.join(THRESHOLD_SCOPES)}")
    agent = body.get("agent", "*")
    if not isinstance(agent, str) or not agent.strip():
        raise ValidationError("agent", "must be an agent name or '*'")
    raw = body.get("limit_usd")
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValidationError("limit_usd", 'must be an amount in USD such as "1.50"')
    try:
        amount = Decimal(str(raw))
    except InvalidOperation:
        raise ValidationError("limit_usd", f"cannot read {raw!r} as an amount") from None
    if not amount.is_finite() or amount <= 0:
        raise ValidationError("limit_usd", "must be more than 0")
    if amount > MAX_THRESHOLD_USD:
        raise ValidationError("limit_usd", f"must be at most {MAX_THRESHOLD_USD:,} USD")
    auto = body.get("auto_pause", False)
    if not isinstance(auto, bool):
        raise ValidationError("auto_pause", "must be true or false")
    return Threshold(scope, agent.strip(), to_nano(amount.quantize(Decimal("1E-9"))), auto)


def routes(services: Services) -> list[BaseRoute]:
    """The dashboard's JSON routes, collected by `llmbudget.web.api`."""
    tz = services.config.zone()

    async def overview(request: Request) -> JSONResponse:
        query_params(request, set())
        return JSONResponse(await run_in_threadpool(overview_data.overview, services))

    async def agents(request: Request) -> JSONResponse:
        query_params(request, set())
        return JSONResponse({"agents": await run_in_threadpool(agent_data.agent_cards, services, utcnow())})

    async def agent(request: Request) -> JSONResponse:
        query_params(request, set())
        name = request.path_params["name"]
        cards = await run_in_threadpool(lambda: agent_data.agent_cards(services, utcnow(), only=name))
        c = cards[0]
        if c["last_request"] is None and not c["paused"]:
            raise NotFound(f"no calls from agent {name!r}")
        return JSONResponse({**c, "html": card_html(c, tz)})

    async def sessions(request: Request) -> JSONResponse:
        query_params(request, set())
        return JSONResponse({"sessions": await run_in_threadpool(session_data.sessions, services)})

    async def session(request: Request) -> JSONResponse:
        query_params(request, set())
        return JSONResponse(
            await run_in_threadpool(session_data.session_detail, services, request.path_params["id"])
        )

    async def end(request: Request) -> JSONResponse:
        body = await json_body(request)
        if set(body) - {"reason"}:
            raise ValidationError(sorted(set(body) - {"reason"})[0], "unknown field; accepted: reason")
        reason = body.get("reason", "client")
        if not isinstance(reason, str) or len(reason) > 200:
            raise ValidationError("reason", "must be text of at most 200 characters")
        sid = request.path_params["id"]
        if not await run_in_threadpool(session_exists, services.ledger, sid):
            raise NotFound(f"no session {sid!r}")
        changed = await run_in_threadpool(
            lambda: end_session(services.ledger, sid, reason=reason or "client")
        )
        detail = await run_in_threadpool(session_data.session_detail, services, sid)
        return JSONResponse({**detail, "changed": changed})

    async def explain(request: Request) -> JSONResponse:
        query_params(request, set())
        return JSONResponse(await run_in_threadpool(event_data.explain, services, request.path_params["id"]))

    async def chart(request: Request) -> JSONResponse:
        query_params(request, set())
        name = request.path_params["name"]
        if name not in charts.CHARTS:
            raise NotFound(f"no chart {name!r}; one of {', '.join(charts.CHARTS)}")
        return JSONResponse(await run_in_threadpool(charts.chart_data, services, name, utcnow()))

    async def enforcement(request: Request) -> JSONResponse:
        query_params(request, set())
        return JSONResponse(await run_in_threadpool(budget_data.budgets_panel, services, utcnow()))

    def _invalidate() -> None:
        watch = services.threshold_watch
        if watch is not None:
            watch.invalidate()

    async def thresholds(request: Request) -> JSONResponse:
        query_params(request, set())
        items = await run_in_threadpool(list_thresholds, services.ledger)
        return JSONResponse({"thresholds": [t.to_dict() for t in items]})

    async def set_threshold(request: Request) -> JSONResponse:
        t = _threshold_from(await json_body(request))
        saved = await run_in_threadpool(store_threshold, services.ledger, t)
        _invalidate()
        return JSONResponse(saved.to_dict())

    async def remove_threshold(request: Request) -> JSONResponse:
        scope, agent = request.path_params["scope"], request.path_params["agent"]
        if scope not in THRESHOLD_SCOPES:
            raise ValidationError("scope", f"must be one of {', '.join(THRESHOLD_SCOPES)}")
        found = await run_in_threadpool(delete_threshold, services.ledger, scope, agent)
        if not found:
            raise NotFound(f"no {scope} threshold for agent {agent!r}")
        _invalidate()
        return JSONResponse({"deleted": True, "scope": scope, "agent": agent})

    return [
        Route("/api/overview", overview, methods=["GET"]),
        Route("/api/agents", agents, methods=["GET"]),
        Route("/api/agents/{name}", agent, methods=["GET"]),
        Route("/api/dashboard/sessions", sessions, methods=["GET"]),
        Route("/api/sessions/{id}", session, methods=["GET"]),
        Route("/api/sessions/{id}/end", end, methods=["POST"]),
        Route("/api/events/{id}/explain", explain, methods=["GET"]),
        Route("/api/charts/{name}", chart, methods=["GET"]),
        Route("/api/enforcement", enforcement, methods=["GET"]),
        Route("/api/thresholds", thresholds, methods=["GET"]),
        Route("/api/thresholds", set_threshold, methods=["POST"]),
        Route("/api/thresholds/{scope}/{agent}", remove_threshold, methods=["DELETE"]),
    ]
