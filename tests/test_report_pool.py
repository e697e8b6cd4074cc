"""Reports never stall the proxy: they run in threads a few at a time, wait or get a 503, and a huge range is cut to the ledger."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from fakes.servers import RunningProxy, running_proxy
from starlette.exceptions import HTTPException

from llmbudget.config import Config
from llmbudget.events import UsageEvent
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
