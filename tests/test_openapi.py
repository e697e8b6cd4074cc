"""`/openapi.json` is true to the routes, and schemathesis finds no 500 anywhere in the JSON API."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import schemathesis
from fakes.servers import RunningProxy, running_proxy
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from llmbudget.config import Config
from llmbudget.events import UsageEvent
from llmbudget.web.openapi import OPERATIONS, api_operations

#: never fuzzed: an endless event stream (its route is checked by the table test like every other)
NOT_FUZZED = ("/api/live",)
#: test cases schemathesis ran, per operation (the figure for the report)
CASES: dict[str, int] = {}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    config = Config.model_validate(
        {"backends": {}, "budgets": {"daily_limit_usd": 5}, "server": {"report_wait_s": 30}}
    )
    with running_proxy(config, tmp_path_factory.mktemp("openapi") / "ledger.db") as running:
        t0 = datetime.now(UTC) - timedelta(days=3)
        running.services.ledger.record_many(
            UsageEvent(
                backend="openai",
                model="gpt-4o-mini",
                timestamp=t0 + timedelta(hours=i * 7),
                input_tokens=100,
                output_tokens=50,
                cost_usd=Decimal("0.002"),
                price_status="priced",
                agent=f"agent-{i % 3}",
                session=f"s-{i % 4}",
            )
            for i in range(12)
        )
        running.services.ledger.flush()
        yield running


@pytest.fixture(scope="module")
def spec(proxy: RunningProxy) -> dict[str, Any]:
    r = httpx.get(proxy.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    data: dict[str, Any] = r.json()
    return data


def test_every_api_route_is_documented(proxy: RunningProxy, spec: dict[str, Any]) -> None:
    live = api_operations(list(proxy.app.web.routes))
    assert len(live) >= 10
    undocumented = [op for op in live if op not in OPERATIONS]
    assert not undocumented, f"add these routes to llmbudget.web.openapi.OPERATIONS: {undocumented}"
    stale = [op for op in OPERATIONS if op not in live]
    assert not stale, f"OPERATIONS names routes that no longer exist: {stale}"
    published = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert published == set(live)
    assert not any(op.get("x-undocumented") for ops in spec["paths"].values() for op in ops.values())


def test_each_get_route_takes_exactly_the_documented_query_parameters(
    proxy: RunningProxy, spec: dict[str, Any]
) -> None:
    """Ask each route what it accepts (an unknown parameter's 400 lists them) and compare."""
    checked = 0
    for path, ops in spec["paths"].items():
        if "get" not in ops or path in NOT_FUZZED or path.endswith(".csv"):
            continue
        url = proxy.url + re.sub(r"\{[^}]+\}", "x", path)
        r = httpx.get(url, params={"zz_unknown": "1"}, timeout=10)
        assert r.status_code == 400, (path, r.status_code, r.text)
        message = r.json()["error"]["message"]
        accepted = message.split("accepted: ", 1)[1]
        route_names = set() if accepted == "none" else set(accepted.split(", "))
        documented = {p["name"] for p in ops["get"]["parameters"] if p["in"] == "query"}
        assert documented == route_names, path
        checked += 1
    assert checked >= 8


def _fuzz(operation: Any, key: str, base_url: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case: Any) -> None:
        CASES[key] = CASES.get(key, 0) + 1
        case.call_and_validate(
            base_url=base_url,
            checks=[not_a_server_error, status_code_conformance, content_type_conformance],
        )

    call()


def test_no_api_call_is_a_500(proxy: RunningProxy) -> None:
    """Every operation of the published document, with schemathesis-generated parameters and bodies."""
    loaded = schemathesis.openapi.from_url(proxy.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    started = time.perf_counter()
    for result in loaded.get_all_operations():
        operation = result.ok()
        if operation.path in NOT_FUZZED:
            continue
        operations += 1
        key = f"{operation.method.upper()} {operation.path}"
        try:
            _fuzz(operation, key, proxy.url)
        except Exception as e:  # collect every operation's failure, not just the first
            failures.append(f"{key}: {type(e).__name__}: {str(e)[:2000]}")
    assert operations >= 15
    assert not failures, "\n\n".join(failures)
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/thresholds", b'{"scope": "agent", "agent": "a", "limit_usd": 1e308}'),
        ("POST", "/api/thresholds", b'{"scope": "agent", "agent": "a", "limit_usd": "99999999999999999999"}'),
        ("POST", "/api/thresholds", b"[" * 100_000),
        ("POST", "/api/sessions/s-1/end", b"[" * 100_000),
        ("POST", "/api/agents/a/pause", b"[" * 100_000),
        ("GET", "/api/costs?since=0001-01-01&by=day", None),
        ("GET", "/api/events?until=9999-12-31T23:59:59-05:00", None),
        ("GET", "/api/quota/summary?max_age=99999999999999999999d&probe=false", None),
    ],
)
def test_inputs_the_fuzzer_found_are_a_400(
    method: str, path: str, body: bytes | None, proxy: RunningProxy
) -> None:
    r = httpx.request(
        method, proxy.url + path, content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid"


def test_the_server_kept_serving_and_recording(proxy: RunningProxy) -> None:
    r = httpx.get(proxy.url + "/api/costs", params={"since": "7d", "by": "agent"}, timeout=10)
    assert r.status_code == 200 and r.json()["total"]["calls"] == 12
    started = time.perf_counter()
    assert httpx.get(proxy.url + "/healthz", timeout=5).status_code == 200
    assert time.perf_counter() - started < 2
    if CASES:  # figures for the record (printed with -s)
        print(f"\nschemathesis cases: {sum(CASES.values())} over {len(CASES)} operations")
