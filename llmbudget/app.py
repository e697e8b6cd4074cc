"""The one ASGI application `llmbudget serve` runs: the metering proxy beside the JSON API.

The proxy route is a plain ASGI callable (no framework on the hot path, see RECIPES.md);
Starlette serves `/healthz`, `/api/...` and the dashboard.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .services import Services

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def build_app(services: Services) -> ASGIApp:
    """The ASGI app: requests under a configured backend prefix go to the proxy, the rest to the API."""
    from .web.api import api_routes, install_error_handlers

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "backends": sorted(services.config.backends)})

    web = Starlette(routes=[Route("/healthz", healthz), *api_routes(services)])
    install_error_handlers(web)
    return web
