"""Virtual keys over the JSON API: `GET /api/keys`, `POST /api/keys` (the secret is in that answer only),
`POST /api/keys/{name}/revoke`. The same as `llmbudget keys list|create|revoke --json`; like every
`/api` route they need the admin token when one is configured, and JSON from the server's own origin.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..errors import ValidationError
from ..keys import make_key, parse_expires
from ..services import Services
from ..store.keys import KeyStore
from .params import query_params

_FIELDS = ("name", "agent", "team", "user", "backends", "expires")


def _text(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ValidationError(name, "is required")
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise ValidationError(name, "must be a string of at most 256 characters")
    return value.strip() or None


def _backends(body: dict[str, Any], known: list[str]) -> tuple[str, ...] | None:
    value = body.get("backends")
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(b, str) for b in value):
        raise ValidationError("backends", "must be a non-empty list of backend names, or null for all")
    unknown = [b for b in value if b not in known]
    if unknown:
        raise ValidationError(
            "backends", f"unknown backend {unknown[0]!r}; configured: {', '.join(sorted(known)) or '(none)'}"
        )
    return tuple(dict.fromkeys(value))


def _renamed(e: ValidationError, field: str) -> ValidationError:
    """The library names CLI arguments (`NAME`, `--expires`); the API names JSON fields."""
    message = str(e).split(": ", 1)[1] if ": " in str(e) else str(e)
    return ValidationError(field, message)


def routes(services: Services) -> list[BaseRoute]:
    """The key routes, collected by `llmbudget.web.api`."""

    def store() -> KeyStore:
        return KeyStore(services.ledger)

    async def list_keys(request: Request) -> JSONResponse:
        query_params(request, ())
        keys = await run_in_threadpool(lambda: store().list())
        return JSONResponse({"keys": [k.to_dict() for k in keys]})

    async def create_key(request: Request) -> JSONResponse:
        query_params(request, ())
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, RecursionError):
            raise ValidationError("body", 'must be JSON such as {"name": "ci-bot", "agent": "ci"}') from None
        if not isinstance(body, dict):
            raise ValidationError("body", 'must be a JSON object such as {"name": "ci-bot"}')
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            raise ValidationError(unknown[0], f"unknown field; accepted: {', '.join(_FIELDS)}")
        name = _text(body, "name", required=True)
        if name is None:
            raise ValidationError("name", "must not be empty")
        expires = _text(body, "expires")
        try:
            key, secret = make_key(
                name,
                agent=_text(body, "agent"),
                team=_text(body, "team"),
                user=_text(body, "user"),
                backends=_backends(body, list(services.config.backends)),
                expires=parse_expires(expires) if expires else None,
            )
        except ValidationError as e:
            raise _renamed(e, "name" if e.field == "NAME" else e.field.lstrip("-")) from None
        try:
            await run_in_threadpool(store().add, key)
        except ValidationError as e:
            raise _renamed(e, "name") from None
        return JSONResponse({**key.to_dict(), "key": secret})

    async def revoke_key(request: Request) -> JSONResponse:
        query_params(request, ())
        name = request.path_params["name"]
        key, changed = await run_in_threadpool(store().revoke, name)  # NotFound: a 404
        return JSONResponse({**key.to_dict(), "changed": changed})

    return [
        Route("/api/keys", list_keys, methods=["GET"]),
        Route("/api/keys", create_key, methods=["POST"]),
        Route("/api/keys/{name}/revoke", revoke_key, methods=["POST"]),
    ]
