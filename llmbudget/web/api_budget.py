"""Budget JSON API: `GET /api/budgets` (`?utilization=true`), `GET /api/notifications` (`?limit=&kind=`),
`POST /api/agents/{name}/pause` (optional JSON `{"reason": ...}`) and `POST /api/agents/{name}/resume`.

`GET /api/budgets` answers exactly what `llmbudget budget --json` prints.
"""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..alerts import KINDS, list_notifications
from ..budget.enforcer import BudgetEnforcer
from ..budget.factory import build_enforcer
from ..budget.report import budget_report
from ..errors import ValidationError
from ..services import Services
from .params import flag, query_params


def serving_enforcer(services: Services) -> BudgetEnforcer:
    """The serving enforcer, or one built on demand (no budgets configured: pauses and notices still work)."""
    enf = services.enforcer
    if enf is None:
        enf = build_enforcer(
            services.config, services.ledger.url, state=services.ledger, price_fn=lambda *a: None
        )
        services.enforcer = enf
    return enf


def routes(services: Services) -> list[BaseRoute]:
    """The budget routes, collected by `llmbudget.web.api`."""

    async def budgets(request: Request) -> JSONResponse:
        utilization = flag(query_params(request, {"utilization"}), "utilization")
        enf = await run_in_threadpool(serving_enforcer, services)
        data = await run_in_threadpool(
            budget_report, enf, services.ledger, services.config, utilization=utilization
        )
        return JSONResponse(data)

    async def notifications(request: Request) -> JSONResponse:
        p = query_params(request, {"limit", "kind"})
        try:
            limit = int(p.get("limit", "100"))
        except ValueError:
            raise ValidationError("limit", f"must be a whole number, got {p['limit']!r}") from None
        if not 1 <= limit <= 10_000:
            raise ValidationError("limit", f"must be between 1 and 10000, got {limit}")
        kind = p.get("kind")
        if kind is not None and kind not in KINDS:
            raise ValidationError("kind", f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        items = await run_in_threadpool(list_notifications, services.ledger, limit=limit, kind=kind)
        return JSONResponse({"notifications": items})

    async def pause(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        reason = "paused from the dashboard"
        raw = await request.body()
        if raw.strip():
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise ValidationError("body", 'must be JSON such as {"reason": "..."}') from None
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
                raise ValidationError("reason", "must be a string")
            reason = body.get("reason") or reason
        enf = await run_in_threadpool(serving_enforcer, services)
        was = name in await run_in_threadpool(enf.paused)
        await run_in_threadpool(lambda: enf.pause(name, reason=reason, by="api"))
        return JSONResponse({"agent": name, "paused": True, "changed": not was})

    async def resume(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        enf = await run_in_threadpool(serving_enforcer, services)
        changed = await run_in_threadpool(enf.resume, name)
        return JSONResponse({"agent": name, "paused": False, "changed": changed})

    return [
        Route("/api/budgets", budgets, methods=["GET"]),
        Route("/api/notifications", notifications, methods=["GET"]),
        Route("/api/agents/{name}/pause", pause, methods=["POST"]),
        Route("/api/agents/{name}/resume", resume, methods=["POST"]),
    ]
