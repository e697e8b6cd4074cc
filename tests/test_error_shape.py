"""Every API error answers in ONE shape: {"error": {"code", "message", "status"[, "field"]}}."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from llmbudget.config import Config
from llmbudget.errors import (
    BudgetExceeded,
    ConfigError,
    DatabaseUnreachable,
    LLMBudgetError,
    NotFound,
    StorageError,
    ValidationError,
)
from llmbudget.services import Services
from llmbudget.store import open_ledger
from llmbudget.web.errors import error_body, install_error_handlers


def assert_shape(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape, with the HTTP status repeated inside."""
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) in ({"code", "message", "status"}, {"code", "message", "status", "field"})
    assert err["status"] == status
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    return dict(err)


class Teapot(LLMBudgetError):
    code = "teapot"
    http_status = 418


RAISES: dict[str, BaseException] = {
    "validation": ValidationError("since", "cannot read 'soon'"),
    "config": ConfigError("unknown key", path="x.yaml", line=3, key="backends.a"),
    "storage": StorageError("database is locked"),
    "unreachable": DatabaseUnreachable("postgresql://u:***@h/db is not answering; check it is running"),
    "notfound": NotFound("no such budget 'daily'"),
    "budget": BudgetExceeded("Cloud budget exhausted", retry_after_s=120),
    "teapot": Teapot("custom error"),
    "http": HTTPException(409, "already paused"),
    "crash": RuntimeError("secret internal detail sk-abc123"),
}


@pytest.fixture
def client() -> Iterator[TestClient]:
    async def boom(request: Request) -> JSONResponse:
        raise RAISES[request.path_params["kind"]]

    app = Starlette(routes=[Route("/api/raise/{kind}", boom, methods=["GET"])])
    install_error_handlers(app)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    "kind, status, code",
    [
        ("validation", 400, "invalid"),
        ("config", 400, "config_error"),
        ("storage", 503, "storage_error"),
        ("unreachable", 503, "database_unreachable"),
        ("notfound", 404, "not_found"),
        ("budget", 429, "budget_exceeded"),
        ("teapot", 418, "teapot"),
        ("http", 409, "conflict"),
        ("crash", 500, "internal_error"),
    ],
)
def test_every_error_has_the_one_shape(client: TestClient, kind: str, status: int, code: str) -> None:
    err = assert_shape(client.get(f"/api/raise/{kind}"), status, code)
    exc = RAISES[kind]
    if kind == "crash":
        assert "secret" not in err["message"] and "sk-" not in err["message"]  # never leak internals
    elif isinstance(exc, HTTPException):
        assert err["message"] == exc.detail
    else:
        assert err["message"] == str(exc)


def test_validation_error_names_the_field(client: TestClient) -> None:
    err = assert_shape(client.get("/api/raise/validation"), 400)
    assert err["field"] == "since"


def test_budget_exceeded_sets_retry_after(client: TestClient) -> None:
    resp = client.get("/api/raise/budget")
    assert_shape(resp, 429)
    assert resp.headers["retry-after"] == "120"


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    err = assert_shape(client.get("/api/nope"), 404, "not_found")
    assert "/api/nope" in err["message"]
    err = assert_shape(client.post("/api/raise/validation"), 405, "method_not_allowed")
    assert "POST" in err["message"]


def test_error_body_helper() -> None:
    assert error_body(400, "bad") == {"error": {"code": "bad_request", "message": "bad", "status": 400}}
    assert error_body(422, "x", field="limit")["error"]["field"] == "limit"


def test_the_served_app_uses_the_shape(tmp_path: Path) -> None:
    """The real app from `llmbudget serve` answers unknown API routes and bad parameters in the shape."""
    from llmbudget.app import build_app
    from llmbudget.pricing import PriceBook

    cfg = Config()
    ledger = open_ledger(f"sqlite:///{tmp_path / 'l.db'}")
    services = Services(cfg, ledger, PriceBook.from_config(cfg))
    try:
        with TestClient(build_app(services), base_url="http://localhost", raise_server_exceptions=False) as c:  # type: ignore[arg-type]
            assert_shape(c.get("/api/does-not-exist"), 404, "not_found")
            err = assert_shape(c.get("/api/costs?since=soon"), 400, "invalid")
            assert err["field"] == "since"
            err = assert_shape(c.get("/api/events?limit=zero"), 400, "invalid")
            assert err["field"] == "limit"
            assert_shape(c.delete("/api/sessions"), 405, "method_not_allowed")
            # query parameters are checked the same way in every API module
            for url, field in [
                ("/api/costs?agent=a&agent=b", "agent"),
                ("/api/costs?colour=red", "colour"),
                ("/api/budgets?utilization=maybe", "utilization"),
                ("/api/notifications?nope=1", "nope"),
                ("/api/quota?x=1", "x"),
                ("/api/quota/summary?probe=perhaps", "probe"),
            ]:
                err = assert_shape(c.get(url), 400, "invalid")
                assert err["field"] == field, url
    finally:
        services.close()
