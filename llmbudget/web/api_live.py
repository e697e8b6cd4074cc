"""`GET /api/live`: server-sent events carrying small increments to every open page.

Events on the stream:

    event: hello     {"replica": "...", "redis": true}          once, on connect
    event: usage     {"agent", "session", "calls", "tokens", "cost_usd", "cost_nano", "model", ...}
                     the calls of one dispatch (a tenth of a second) with the same agent, session,
                     backend, provider, model, tier and status, summed; `calls` says how many,
                     `recent_costs` their last 10 costs when more than one
    event: notice    a notification (`/api/notifications` shape)
    event: resync    {"reason": ...}: increments were dropped (slow client); re-read the totals once

A comment line is sent every 15 seconds so proxies keep the connection open. The fan-out
(`llmbudget.fanout.LiveHub`) never waits for a stream: a full queue drops and marks a resync.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import BaseRoute, Route

from ..errors import LLMBudgetError
from ..fanout import batch_text, frame
from ..services import Services
from .params import query_params

HEARTBEAT_S = 15.0


class LiveUnavailable(LLMBudgetError):
    code = "live_unavailable"
    http_status = 503


def routes(services: Services) -> list[BaseRoute]:
    """The live route, collected by `llmbudget.web.api`."""

    async def live(request: Request) -> StreamingResponse:
        query_params(request, set())
        hub = services.live
        if hub is None:
            raise LiveUnavailable("live updates are not running in this process")
        sub = hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n" + frame("hello", {"replica": hub.replica, "redis": bool(hub.redis_url)})
                while True:
                    batches = await sub.batches(HEARTBEAT_S)
                    if not batches:
                        yield ": keep-alive\n\n"
                        continue
                    text = "".join(batch_text(b) for b in batches)
                    if text:
                        yield text
                    if any(b and b[-1].get("type") == "bye" for b in batches):
                        return
            finally:
                sub.close()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return [Route("/api/live", live, methods=["GET"])]
