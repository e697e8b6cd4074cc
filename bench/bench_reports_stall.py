"""Do costly reports stall the proxy? A proxied call's latency alone, then while 8 reports run at once.

`llmbudget serve` (its own process, a SQLite ledger of 100,000 events over two years) and the fast
fake upstream of proxy_overhead.py (its own process). The load generator sends sequential proxied
chat calls and measures each one; in the second phase 8 clients loop on the costliest report
there is (`/api/costs?by=day` from the earliest date the API accepts to now) the whole time, from
a process of their own (as a dashboard or a script would). Direct calls to the upstream are
measured the same way in each phase, for the proxy's added latency.

    .venv/bin/python bench/bench_reports_stall.py [--quick]

Reported: proxied call p50/p99 without and with the reports (and the difference), reports
answered, refused with 503 (queue full), and their p50 duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from gen_events import generate  # noqa: E402
from proxy_overhead import CHAT_BODY, free_port, wait_port  # noqa: E402

REPORT = "/api/costs?by=day&since=0001-01-03"
REPORTERS = 8


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


async def _calls(session: Any, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=CHAT_BODY, headers={"content-type": "application/json"}) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _reporters(base: str, out: str) -> None:
    """Loop on the costly report with REPORTERS clients until terminated; one line per answer in `out`."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def reporter() -> None:
            while True:
                t0 = time.perf_counter()
                async with session.get(base + REPORT, timeout=aiohttp.ClientTimeout(total=120)) as r:
                    await r.read()
                    status = r.status
                    retry = float(r.headers.get("retry-after", "1"))
                with open(out, "a") as f:
                    f.write(f"{status} {(time.perf_counter() - t0) * 1000:.3f}\n")
                if status == 503:
                    await asyncio.sleep(retry / 10)
                else:
                    assert status in (200, 400), status

        await asyncio.gather(*(reporter() for _ in range(REPORTERS)))


async def _measure(base: str, direct: str, calls: int, out: Path) -> dict[str, Any]:
    import aiohttp

    url = base + "/openai/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        await _calls(session, url, 50)  # warm up
        await _calls(session, direct, 50)
        alone = await _calls(session, url, calls)
        direct_alone = await _calls(session, direct, calls)
        # the reports come from another process, as a dashboard's or a script's would
        reporters = subprocess.Popen(
            [sys.executable, __file__, "--role", "reporters", "--base", base, "--out", str(out)]
        )
        try:
            deadline = time.perf_counter() + 60
            while time.perf_counter() < deadline:  # steady state: reports are being answered
                if out.exists() and out.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # let every reporter be inside a report
            busy = await _calls(session, url, calls)
            direct_busy = await _calls(session, direct, calls)
        finally:
            reporters.terminate()
            reporters.wait(30)
    answers = [line.split() for line in out.read_text().splitlines() if line.strip()]
    done = [float(ms) for status, ms in answers if status != "503"]
    return {
        "proxied_alone_ms": {"p50": _pct(alone, 0.5), "p99": _pct(alone, 0.99)},
        "proxied_with_8_reports_ms": {"p50": _pct(busy, 0.5), "p99": _pct(busy, 0.99)},
        "added_by_reports_ms": {
            "p50": round(_pct(busy, 0.5) - _pct(alone, 0.5), 2),
            "p99": round(_pct(busy, 0.99) - _pct(alone, 0.99), 2),
        },
        # what the proxy adds to a call compared with calling the upstream directly, alone and
        # while the reports run (the direct calls are measured the same way right after)
        "added_vs_direct_alone_ms": {
            "p50": round(_pct(alone, 0.5) - _pct(direct_alone, 0.5), 2),
            "p99": round(_pct(alone, 0.99) - _pct(direct_alone, 0.99), 2),
        },
        "added_vs_direct_with_reports_ms": {
            "p50": round(_pct(busy, 0.5) - _pct(direct_busy, 0.5), 2),
            "p99": round(_pct(busy, 0.99) - _pct(direct_busy, 0.99), 2),
        },
        "reports_answered": len(done),
        "reports_refused_503": len(answers) - len(done),
        "report_p50_ms": round(statistics.median(done), 1) if done else None,
        "calls_measured": calls,
    }


def main(quick: bool = False) -> dict[str, Any]:
    import uvloop

    calls = 100 if quick else 1000  # a phase's p99 is then its tenth-worst call, not its third
    py = sys.executable
    up_port, port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/ledger.db"
        gen = generate(
            db, 20_000 if quick else 100_000, start=datetime(2025, 1, 1, tzinfo=UTC), span=timedelta(days=730)
        )
        cfg = Path(tmp) / "llmbudget.yaml"
        cfg.write_text(
            f"backends:\n  openai: {{kind: openai, base_url: http://127.0.0.1:{up_port}, provider: openai}}\n"
        )
        try:
            procs.append(
                subprocess.Popen(
                    [py, str(HERE / "proxy_overhead.py"), "--role", "upstream", "--port", str(up_port)]
                )
            )
            procs.append(
                subprocess.Popen(
                    [
                        str(Path(py).parent / "llmbudget"),
                        "serve",
                        "--config",
                        str(cfg),
                        "--db",
                        db,
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                    ],
                    env={**os.environ, "LLMBUDGET_HOME": tmp},
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(up_port)
            wait_port(port)
            figures = uvloop.run(
                _measure(
                    f"http://127.0.0.1:{port}",
                    f"http://127.0.0.1:{up_port}/v1/chat/completions",
                    calls,
                    Path(tmp) / "reports.txt",
                )
            )
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    figures["ledger_events"] = gen["events"]
    figures["machine"] = {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    return figures


if __name__ == "__main__":
    if sys.argv[1:3] == ["--role", "reporters"]:
        import uvloop

        uvloop.run(_reporters(sys.argv[sys.argv.index("--base") + 1], sys.argv[sys.argv.index("--out") + 1]))
    else:
        print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
