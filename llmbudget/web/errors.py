"""The one JSON error shape of llmbudget's HTTP API, produced here and nowhere else.

Every error under `/api/...` (and any other non-proxy route) answers:

    {"error": {"code": "invalid", "message": "since: cannot read 'soon'; ...", "status": 400}}

plus `"field": "since"` when one parameter is to blame. `code` is a short machine-readable
word: an `LLMBudgetError`'s own `code`, or `bad_request`, `not_found`, `method_not_allowed`,
`internal_error` and the like for HTTP-level errors. `status` repeats the HTTP status. An
unexpected exception is a 500 with a generic message (details go to the log, never to
the client). The proxy's routes use each wire protocol's own error shape instead.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import BudgetExceeded, LLMBudgetError, ValidationError

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


def code_for_status(status: int) -> str:
    """The default error code of an HTTP status."""
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_body(
    status: int, message: str, *, code: str | None = None, field: str | None = None
) -> dict[str, Any]:
    """The error shape as a dict: {"error": {"code", "message", "status"[, "field"]}}."""
    err: dict[str, Any] = {"code": code or code_for_status(status), "message": message, "status": status}
    if field is not None:
        err["field"] = field
    return {"error": err}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSONResponse in the error shape."""
    return JSONResponse(
        error_body(status, message, code=code, field=field), status_code=status, headers=headers
    )


def response_for_exception(exc: BaseException) -> JSONResponse:
    """Turn any exception into the error shape: ours by `http_status`/`code`, HTTP errors by status, else 500."""
    if isinstance(exc, LLMBudgetError):
        headers = None
        if isinstance(exc, BudgetExceeded) and exc.retry_after_s is not None:
            headers = {"Retry-After": str(int(exc.retry_after_s))}
        field = exc.field if isinstance(exc, ValidationError) else None
        return error_response(exc.http_status, str(exc), code=exc.code, field=field, headers=headers)
    if isinstance(exc, HTTPException):
        message = (
            exc.detail if isinstance(exc.detail, str) and exc.detail else HTTPStatus(exc.status_code).phrase
        )
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, message, headers=headers)
    return error_response(500, "internal error; see the server log")


async def _handle_http(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.detail == HTTPStatus(exc.status_code).phrase:
        # Starlette's router raises bare 404/405s: say which route was asked for
        if exc.status_code == 404:
            return error_response(404, f"no route {request.url.path}")
        if exc.status_code == 405:
            return error_response(
                405,
                f"{request.method} is not allowed on {request.url.path}",
                headers=dict(exc.headers) if exc.headers else None,
            )
    return response_for_exception(exc)


async def _handle_ours(request: Request, exc: Exception) -> Response:
    if isinstance(exc, LLMBudgetError) and exc.http_status >= 500:
        log.warning("api error path=%s code=%s message=%s", request.url.path, exc.code, exc)
    return response_for_exception(exc)


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware re-raises after this answer, so the server logs the traceback once.
    return response_for_exception(exc)


def install_error_handlers(app: Starlette) -> None:
    """Make every error of `app` answer in the one shape (HTTP errors, LLMBudgetError, anything else)."""
    app.add_exception_handler(HTTPException, _handle_http)
    app.add_exception_handler(LLMBudgetError, _handle_ours)
    app.add_exception_handler(Exception, _handle_unexpected)
