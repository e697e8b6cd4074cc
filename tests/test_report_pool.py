"""Reports never stall the proxy: they run in worker processes a few at a time, wait or get a 503, and a huge range is cut to the ledger."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import reportfns
from fakes.servers import RunningProxy, running_proxy
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from llmbudget.config import Config
from llmbudget.errors import ValidationError
from llmbudget.events import UsageEvent
from llmbudget.store import open_ledger
from llmbudget.web.reportpool import ReportPool


def test_at_most_concurrency_reports_run_at_once_and_the_rest_wait() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def report(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return i

    async def main() -> list[int]:
        pool = ReportPool(concurrency=2, wait_s=10)
        loop_ticks = 0

        async def ticker() -> None:
            nonlocal loop_ticks
            while True:
                await asyncio.sleep(0.005)
                loop_ticks += 1

        tick = asyncio.create_task(ticker())
        out = await asyncio.gather(*(pool.run(report, i) for i in range(8)))
        tick.cancel()
        assert loop_ticks >= 10  # the event loop kept running while the reports did
        return list(out)

    assert asyncio.run(main()) == list(range(8))
    assert peak == 2


def test_a_report_that_gets_no_turn_in_time_is_a_503_with_retry_after() -> None:
    release = threading.Event()

    async def main() -> None:
        pool = ReportPool(concurrency=1, wait_s=0.1)
        first = asyncio.create_task(pool.run(release.wait, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(HTTPException) as e:
            await pool.run(lambda: None)
        assert e.value.status_code == 503 and e.value.headers == {"Retry-After": "1"}
        assert "report_concurrency" in e.value.detail
        assert pool.refused == 1
        release.set()
        assert await first is True
        assert await pool.run(lambda: 7) == 7  # the slot came back

    asyncio.run(main())


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    config = Config.model_validate(
        {"backends": {}, "server": {"report_concurrency": 1, "report_wait_s": 0.2}}
    )
    with running_proxy(config, tmp_path_factory.mktemp("reports") / "ledger.db") as running:
        t0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
        running.services.ledger.record_many(
            UsageEvent(
                backend="openai",
                model="gpt-4o-mini",
                timestamp=t0 + timedelta(days=i * 30),
                input_tokens=10,
                output_tokens=5,
                cost_usd=Decimal("0.001"),
                price_status="priced",
            )
            for i in range(5)
        )
        running.services.ledger.flush()
        yield running


def test_a_report_from_the_first_day_the_calendar_allows_is_cut_to_the_ledger(proxy: RunningProxy) -> None:
    t0 = time.perf_counter()
    r = httpx.get(proxy.url + "/api/costs", params={"by": "day", "since": "0001-01-03"}, timeout=30)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["since"].startswith("0001-01-03")  # the window says what was asked
    assert [row["key"] for row in data["rows"]] == [
        (datetime(2025, 6, 1, tzinfo=UTC) + timedelta(days=30 * i)).strftime("%Y-%m-%d") for i in range(5)
    ]
    assert data["total"]["calls"] == 5
    assert elapsed < 5, f"a report over 2,000 years of empty days took {elapsed:.1f} s"


def test_a_range_after_the_last_event_is_empty(proxy: RunningProxy) -> None:
    r = httpx.get(proxy.url + "/api/costs", params={"by": "week", "since": "2030-01-01"}, timeout=10)
    assert r.status_code == 200 and r.json()["rows"] == [] and r.json()["total"]["calls"] == 0


# ---------------------------------------------------------------- reports in worker processes
def _record(ledger: Any, n: int) -> None:
    t0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
    ledger.record_many(
        UsageEvent(
            backend="openai",
            model="gpt-4o-mini",
            timestamp=t0 + timedelta(hours=i),
            input_tokens=10,
            output_tokens=5,
            cost_usd=Decimal("0.001"),
            price_status="priced",
        )
        for i in range(n)
    )
    ledger.flush()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Any]:
    led = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}", audit_log=str(tmp_path / "audit.jsonl"))
    _record(led, 3)
    yield led
    led.close()


def _pool(ledger: Any, concurrency: int = 1, wait_s: float = 10) -> ReportPool:
    return ReportPool(concurrency, wait_s, ledger=ledger, reopen=(ledger.url, {}))


def test_a_report_runs_in_a_worker_process_on_its_own_ledger_and_errors_come_back_as_themselves(
    ledger_url: str, tmp_path: Path
) -> None:
    ledger = open_ledger(ledger_url, audit_log=str(tmp_path / "audit.jsonl"))
    _record(ledger, 3)

    async def main() -> None:
        pool = _pool(ledger)
        try:
            first = json.loads(await pool.report_json(reportfns.whoami, tag="a"))
            second = json.loads(await pool.report_json(reportfns.whoami, tag="b"))
            with pytest.raises(ValidationError) as e:
                await pool.report_json(reportfns.refuse)
            assert e.value.field == "since" and "soon" in str(e.value)
        finally:
            pool.close()
        assert first["pid"] != os.getpid() and first["ledger_url"] == ledger.url and first["calls"] == 3
        assert second["pid"] == first["pid"] and second["tag"] == "b"  # the worker and its ledger stay
        # a report only gets the CPU the proxy leaves: idle scheduling (Linux), and the lowest nice
        assert first["policy"] == os.SCHED_IDLE and first["nice"] == 19

    try:
        asyncio.run(main())
    finally:
        ledger.close()


def test_a_report_comes_back_encoded_in_the_worker_byte_for_byte_as_the_api_would_encode_it(
    ledger: Any,
) -> None:
    async def main() -> None:
        pool = _pool(ledger)
        try:
            raw = await pool.report_json(reportfns.whoami, tag="caf\u00e9 \u2014 \U0001f600")
            with pytest.raises(ValidationError):  # errors still come back as themselves
                await pool.report_json(reportfns.refuse)
        finally:
            pool.close()
        data = json.loads(raw)
        assert data["pid"] != os.getpid() and data["calls"] == 3  # encoded in the worker process
        assert raw == JSONResponse(data).body  # what the server would have sent itself
        threads = ReportPool(1, 10, ledger=ledger, reopen=None)
        local = await threads.report_json(reportfns.whoami, tag="t")
        assert json.loads(local)["pid"] == os.getpid()

    asyncio.run(main())


def test_a_ledger_without_a_url_runs_its_reports_in_threads(ledger: Any) -> None:
    pool = ReportPool(1, 10, ledger=ledger, reopen=None)
    out = json.loads(asyncio.run(pool.report_json(reportfns.whoami, tag="t")))
    assert out["pid"] == os.getpid() and out["calls"] == 3


def test_a_worker_that_dies_mid_report_is_a_503_and_the_next_report_gets_a_fresh_worker(ledger: Any) -> None:
    async def main() -> None:
        pool = _pool(ledger)
        try:
            before = json.loads(await pool.report_json(reportfns.whoami, tag="x"))
            t0 = time.monotonic()
            with pytest.raises(HTTPException) as e:
                await pool.report_json(reportfns.crash)
            assert time.monotonic() - t0 < 20
            assert e.value.status_code == 503 and e.value.headers == {"Retry-After": "1"}
            assert "worker" in e.value.detail and pool.crashed == 1
            after = json.loads(await pool.report_json(reportfns.whoami, tag="y"))
            assert after["pid"] != before["pid"] and after["calls"] == 3
        finally:
            pool.close()

    asyncio.run(main())


def test_closing_the_pool_stops_a_long_report_at_once(ledger: Any) -> None:
    async def main() -> None:
        pool = _pool(ledger)
        running = asyncio.create_task(pool.report_json(reportfns.slow, seconds=60))
        deadline = time.monotonic() + 30
        while not (pool._executor and pool._executor._processes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        procs = list(pool._executor._processes.values()) if pool._executor else []
        assert procs, "no worker started"
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await asyncio.to_thread(pool.close)
        assert time.monotonic() - t0 < 6
        assert not any(p.is_alive() for p in procs)
        with pytest.raises(BaseException):  # noqa: B017 - cancelled or broken, never a hang
            await asyncio.wait_for(running, timeout=10)

    asyncio.run(main())


def test_the_api_answers_from_worker_processes_and_the_server_stops_them(tmp_path: Path) -> None:
    config = Config.model_validate({"backends": {}, "server": {"report_concurrency": 2}})
    with running_proxy(config, tmp_path / "ledger.db") as running:
        _record(running.services.ledger, 4)
        r = httpx.get(running.url + "/api/costs", params={"by": "day", "since": "2025-06-01"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["total"]["calls"] == 4
        bad = httpx.get(running.url + "/api/costs", params={"since": "soon"}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "since"
        pool = running.services.report_pool
        assert isinstance(pool, ReportPool) and pool._executor is not None
        procs = list(pool._executor._processes.values())
        assert procs and all(p.is_alive() for p in procs)
    assert not any(p.is_alive() for p in procs)  # the server's shutdown stopped them
