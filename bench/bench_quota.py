"""Quota watch: header parsing, concurrent probes, analysis over a month of readings, Claude Code import.

    .venv/bin/python bench/bench_quota.py [--quick]

Figures (`main()` returns them for `bench/run_all.py`):
- `parse_unified_us`, `parse_openai_us`: one response's rate-limit headers into a reading (the
  proxy does this for piggyback readings).
- `probe_wall_s` against `probe_sequential_s`: N accounts whose fake server answers after
  200 ms, probed by `probe_all` (concurrent) and one after another (what it would cost).
- `analysis_s`: burn rate, weekly, stagger, underspend and rotation over a month of readings
  (10 accounts, one reading every 5 minutes: 86,400 readings; --quick: 3 days).
- `read_log_s`: the same readings read back from the daily JSONL log.
- `claude_import_lines_per_s`: Claude Code log lines read, de-duplicated and turned into events.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
import timeit
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmbudget.quota import analysis as an
from llmbudget.quota.headers import parse_rate_limit_headers
from llmbudget.quota.readings import QuotaReading, Window
from llmbudget.quota.readings_log import append_log, read_log
from llmbudget.quota.weekly import weekly

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

UNIFIED = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-reset": "1763647200",
    "anthropic-ratelimit-unified-5h-utilization": "0.42",
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-reset": "1763888400",
    "anthropic-ratelimit-unified-7d-utilization": "0.5",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-reset": "1763647200",
    "content-type": "application/json",
    "request-id": "req_1",
    "date": "Thu, 20 Nov 2026 12:00:00 GMT",
}
OPENAI = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "200000",
    "x-ratelimit-remaining-tokens": "150000",
    "x-ratelimit-reset-tokens": "1h2m3.5s",
    "content-type": "application/json",
    "openai-processing-ms": "120",
}


def _parse_us(headers: dict[str, str]) -> float:
    n = 20_000
    best = min(timeit.repeat(lambda: parse_rate_limit_headers(headers, now=NOW), number=n, repeat=3))
    return round(best / n * 1e6, 2)


def _probe_figures(accounts: int, delay: float) -> tuple[float, float]:
    from aiohttp import web

    from llmbudget.quota.probe import probe_account, probe_all
    from llmbudget.quota.settings import ProviderConfig

    loop = asyncio.new_event_loop()
    state: dict[str, Any] = {}
    ready = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response(
            {"ok": True}, headers={k: v for k, v in UNIFIED.items() if k.startswith("anth")}
        )

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    import os

    os.environ["BENCH_QUOTA_KEY"] = "sk-bench"
    cfgs = [
        ProviderConfig(
            name=f"seat-{i}",
            kind="anthropic-unified",
            base_url=f"http://127.0.0.1:{state['port']}",
            api_key_env="BENCH_QUOTA_KEY",
        )
        for i in range(accounts)
    ]
    try:
        t0 = time.perf_counter()
        rs = asyncio.run(probe_all(cfgs))
        concurrent = time.perf_counter() - t0
        assert all(r.windows for r in rs), [r.reason for r in rs]

        async def one_by_one() -> None:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                for c in cfgs:
                    await probe_account(c, session)

        t0 = time.perf_counter()
        asyncio.run(one_by_one())
        sequential = time.perf_counter() - t0
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return round(concurrent, 3), round(sequential, 3)


def _readings(days: int, accounts: int = 10, every_min: int = 5) -> list[QuotaReading]:
    out = []
    start = NOW - timedelta(days=days)
    steps = days * 24 * 60 // every_min
    for a in range(accounts):
        for i in range(steps):
            t = start + timedelta(minutes=i * every_min)
            week_start = t - timedelta(days=(t - start).days % 7)
            hours_in = (t - week_start).total_seconds() / 3600
            r5 = t.replace(minute=0, second=0) + timedelta(hours=5 - t.hour % 5)
            out.append(
                QuotaReading(
                    timestamp=t,
                    backend=f"seat-{a}",
                    provider="anthropic-unified",
                    status="allowed",
                    windows={
                        "5h": Window(min(1.0, (t.minute + 60 * (t.hour % 5)) / 300 * (0.5 + a / 20)), r5),
                        "7d": Window(
                            min(1.0, hours_in / 168 * (0.6 + a / 25)), week_start + timedelta(days=7)
                        ),
                    },
                )
            )
    return out


def _analysis_s(readings: list[QuotaReading], now: datetime) -> float:
    def run() -> None:
        an.burn_rates(readings, now=now)
        weekly(readings)
        an.stagger(readings, now=now)
        an.underspend(readings, now=now)
        an.rotation(readings, now=now)

    return round(min(timeit.repeat(run, number=1, repeat=3)), 3)


def _claude_lines(path: Path, responses: int) -> int:
    """A session log: each response logged twice (two content blocks), like Claude Code does."""
    lines = 0
    with path.open("w", encoding="utf-8") as fh:
        for i in range(responses):
            t = (NOW - timedelta(seconds=30 * (responses - i))).isoformat().replace("+00:00", "Z")
            for block, out_tokens in ((0, 12), (1, 250)):
                fh.write(
                    json.dumps(
                        {
                            "parentUuid": f"u{i}-{block - 1}",
                            "sessionId": f"s{i // 500}",
                            "version": "1.0.2",
                            "cwd": "/home/alice/code/webapp",
                            "type": "assistant",
                            "uuid": f"u{i}-{block}",
                            "timestamp": t,
                            "requestId": f"req_{i}",
                            "message": {
                                "id": f"msg_{i}",
                                "type": "message",
                                "role": "assistant",
                                "model": "claude-sonnet-4-5-20250929",
                                "content": [{"type": "text", "text": "x" * 40}],
                                "usage": {
                                    "input_tokens": 4,
                                    "output_tokens": out_tokens,
                                    "cache_creation_input_tokens": 1200,
                                    "cache_read_input_tokens": 30000,
                                },
                            },
                        }
                    )
                    + "\n"
                )
                lines += 1
    return lines


def _claude_import(responses: int) -> float:
    from llmbudget.pricing import PriceBook
    from llmbudget.quota import claude_code as cc

    with tempfile.TemporaryDirectory() as d:
        proj = Path(d) / "projects" / "-home-alice-code-webapp"
        proj.mkdir(parents=True)
        lines = _claude_lines(proj / "s.jsonl", responses)
        prices = PriceBook()
        t0 = time.perf_counter()
        events, scan = cc.load_events([d], prices)
        took = time.perf_counter() - t0
        assert len(events) == responses and scan.duplicates == responses
    return round(lines / took)


def main(quick: bool = False) -> dict[str, Any]:
    """Run every figure; `quick` uses small sizes."""
    days = 3 if quick else 30
    readings = _readings(days)
    now = readings[-1].timestamp + timedelta(minutes=1)
    with tempfile.TemporaryDirectory() as d:
        for r in readings:
            append_log(r, log_dir=d)
        t0 = time.perf_counter()
        back = read_log(d)
        read_s = round(time.perf_counter() - t0, 3)
        assert len(back) == len(readings)
    concurrent, sequential = _probe_figures(5 if quick else 20, 0.2)
    return {
        "parse_unified_us": _parse_us(UNIFIED),
        "parse_openai_us": _parse_us(OPENAI),
        "probe_accounts": 5 if quick else 20,
        "probe_wall_s": concurrent,
        "probe_sequential_s": sequential,
        "readings": len(readings),
        "analysis_s": _analysis_s(readings, now),
        "read_log_s": read_s,
        "claude_import_lines_per_s": _claude_import(2_000 if quick else 20_000),
    }


if __name__ == "__main__":
    for k, v in main(quick="--quick" in sys.argv).items():
        print(f"{k}: {v}")
