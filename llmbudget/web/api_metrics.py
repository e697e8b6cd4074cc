"""`GET /metrics`: every series of `llmbudget.web.metrics` in the Prometheus text format.

Behind the same access guard as the API: off loopback it needs the admin token
(`Authorization: Bearer ...` in the scrape config).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import LLMBudgetError
from ..services import Services
from .metrics import Metrics
from .params import query_params


class MetricsUnavailable(LLMBudgetError):
    code = "metrics_unavailable"
    http_status = 503


def routes(services: Services) -> list[BaseRoute]:
    """The metrics route, collected by `llmbudget.web.api`."""

    async def metrics(request: Request) -> Response:
        query_params(request, set())
        m = services.metrics
        if not isinstance(m, Metrics):
            raise MetricsUnavailable("metrics are not collected in this process")

        body = await run_in_threadpool(m.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    return [Route("/metrics", metrics, methods=["GET"])]
