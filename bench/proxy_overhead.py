"""What the metering proxy costs: the same load straight to a fast fake upstream, through a bare
pass-through proxy (an ASGI callable + one shared aiohttp session, no metering: the comparison the
targets name), through the same pass-through on llmbudget's own upstream client (`bare_lean`: what
metering itself costs, apart from what the cheaper client saves), and through `llmbudget serve`,
interleaved in one run.

Reports added latency p50/p99 at concurrency 1, 10 and 100, requests/s, time to first streamed
byte, and llmbudget's RSS with 200 open streams. Each server runs in its own process; the load
generator is an aiohttp client (uvloop) in this process.

    .venv/bin/python bench/proxy_overhead.py            # full run (~1.5 min), prints JSON
    .venv/bin/python bench/proxy_overhead.py --quick    # shorter rounds
    .venv/bin/python bench/proxy_overhead.py --dashboards 20   # also with 20 open live dashboards

With `--dashboards N`, llmbudget is measured a second time in each round ("llmbudget_dashboards")
while N clients in a process of their own (as browsers are) hold the dashboard's live stream
(`/api/live`) open, read every increment, and re-read `/api/overview` on each `resync` as the
page does; the plain "llmbudget" rows of the same rounds are the comparison.

Targets (README, Benchmarks): at concurrency 1 added p50 <= 0.5 ms and p99 <= 3 ms; at 10 and
100 requests/s >= 0.85x the bare pass-through and CPU per request <= 1.3x the bare one's; first
streamed byte <= 1 ms later than direct; RSS <= 100 MB with 200 open streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHAT_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hi in five words."}],
        "max_tokens": 20,
    }
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "Say hi in five words."}],
    }
).encode()
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there, how are you?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 14,
            "completion_tokens": 6,
            "total_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
).encode()


def _chunk(content: str | None, usage: bool = False) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": None,
    }
    if usage:
        obj["usage"] = {"prompt_tokens": 14, "completion_tokens": 6, "total_tokens": 20}
    else:
        obj["choices"] = [{"index": 0, "delta": {"content": content or ""}, "finish_reason": None}]
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


STREAM_CHUNKS = [_chunk(w) for w in ("Hi", " there", ",", " how", " are", " you?")]
STREAM_USAGE = _chunk(None, usage=True)


# ------------------------------------------------------------------ roles (each a subprocess)


def run_upstream(port: int) -> None:
    """The fast fake provider: OpenAI chat completions, JSON or SSE; `x-hold` keeps a stream open."""
    import uvloop
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(
                body=ANSWER,
                content_type="application/json",
                headers={"x-ratelimit-remaining-requests": "9999", "x-ratelimit-reset-requests": "6ms"},
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(STREAM_CHUNKS[0])
        hold = float(request.headers.get("x-hold", "0"))
        if hold:
            await asyncio.sleep(hold)
        await resp.write(b"".join(STREAM_CHUNKS[1:]))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(STREAM_USAGE)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=2048)


def run_bare(port: int, upstream: str, lean: bool = False) -> None:
    """A pass-through: a plain ASGI callable on uvicorn forwarding with one shared aiohttp session.

    `lean`: the same pass-through forwarding with llmbudget's own upstream client
    (`llmbudget/capture/upstream.py`) instead of aiohttp, so that what metering itself costs can be
    read apart from what the cheaper client saves.
    """
    import aiohttp
    import uvicorn

    from llmbudget.capture.upstream import Origin, UpstreamPool

    state: dict[str, Any] = {}
    hop = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}
    origin = Origin(upstream)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    state["s"] = aiohttp.ClientSession(
                        auto_decompress=False, connector=aiohttp.TCPConnector(limit=2000)
                    )
                    state["pool"] = UpstreamPool()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await state["s"].close()
                    await state["pool"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path = scope["path"].partition("/openai")[2]
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in hop]
        if lean:
            r = await state["pool"].request(
                origin, scope["method"], path, dict(headers), body, connect_timeout=30, read_timeout=600
            )
        else:
            r = await state["s"].request(scope["method"], upstream + path, headers=headers, data=body)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": r.status,
                    "headers": [(k, v) for k, v in r.raw_headers if k.lower() not in hop],
                }
            )
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            r.release()

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=2048,
    )


# ------------------------------------------------------------------ orchestration


def client_connector() -> Any:
    """The load generator's connection pool: unlimited, and idle connections dropped after 3 s,
    before the servers' own keep-alive timeout (uvicorn's 5 s) closes them under a request (the
    loads of the other servers and the quiet waits leave a server's connections idle that long)."""
    import aiohttp

    return aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


async def quiet(window_s: float = 0.2, busy_share: float = 0.1, max_s: float = 3.0) -> float:
    """Wait until the machine is nearly idle (busy under `busy_share` of its CPUs over `window_s`), at
    most `max_s`; returns the seconds waited.

    Called before each measured load, so that the work one server still does after its load (its
    ledger writer draining the last batch, PostgreSQL checkpointing) is not counted against the next.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        b0, t0_ticks = _machine_busy()
        await asyncio.sleep(window_s)
        b1, t1_ticks = _machine_busy()
        if t1_ticks > t0_ticks and (b1 - b0) / (t1_ticks - t0_ticks) <= busy_share:
            break
    return time.monotonic() - t0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def load(
    session: Any, url: str, body: bytes, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    """`concurrency` workers send requests back to back for `seconds`; latencies in ms and requests/s."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status}")
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - t0)


async def first_byte(session: Any, url: str, n: int) -> list[float]:
    out = []
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", "x-hold": "0.002"}
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=STREAM_BODY, headers=headers) as r:
            await r.content.readany()
            out.append((time.perf_counter() - t0) * 1000)
            await r.read()
    return out


async def open_streams(session: Any, url: str, n: int, pid: int) -> float:
    """Hold `n` streams open through the proxy and read its RSS while they are."""
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", "x-hold": "8"}
    started = asyncio.Event()
    count = 0

    async def one() -> None:
        nonlocal count
        async with session.post(url, data=STREAM_BODY, headers=headers) as r:
            await r.content.readany()
            count += 1
            if count == n:
                started.set()
            await r.read()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.5)
    rss = rss_mb(pid)
    await asyncio.gather(*tasks)
    return rss


async def _dashboard(session: Any, base: str, counts: dict[str, int]) -> None:
    """One open dashboard: the live stream read to the end and every frame parsed as the page
    does, the calls the increments cover counted, `/api/overview` re-read on each resync."""
    async with session.get(base + "/api/live", timeout=None) as r:
        event = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                counts[event] = counts.get(event, 0) + 1
                data = json.loads(line[5:])
                if event == "usage":
                    counts["calls"] = counts.get("calls", 0) + int(data.get("calls", 1))
                if event == "resync":
                    async with session.get(base + "/api/overview") as o:
                        await o.read()


def run_dashboards(base: str, n: int, out: str) -> None:
    """The open pages, in a process of their own (as browsers are): `n` live streams read until
    SIGTERM, then what they received written to `out` as JSON."""
    import aiohttp
    import uvloop

    counts: dict[str, int] = {}

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with aiohttp.ClientSession() as session:
            readers = [asyncio.create_task(_dashboard(session, base, counts)) for _ in range(n)]
            while counts.get("hello", 0) < n:  # every page has its stream open
                await asyncio.sleep(0.01)
            Path(out + ".ready").touch()
            await stop.wait()
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    uvloop.run(main())
    Path(out).write_text(json.dumps(counts))


async def measure(
    targets: dict[str, str],
    seconds: float,
    rounds: int,
    pids: dict[str, int],
    dashboards: int = 0,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    import aiohttp

    results: dict[str, Any] = {}
    counts = counts if counts is not None else {}
    dash_base = targets["llmbudget"].split("/openai/", 1)[0]
    if dashboards:
        targets = {**targets, "llmbudget_dashboards": targets["llmbudget"]}
        pids = {**pids, "llmbudget_dashboards": pids["llmbudget"]}

    async def loaded(session: Any, name: str, url: str, c: int) -> tuple[list[float], float, float]:
        """The load's latencies and requests/s, and the serving process's CPU seconds during it."""
        await quiet()
        before = cpu_s(pids[name])
        values, r = await load(session, url, CHAT_BODY, c, seconds)
        return values, r, cpu_s(pids[name]) - before

    async def measured(session: Any, name: str, url: str, c: int) -> tuple[list[float], float, float]:
        if name != "llmbudget_dashboards":
            return await loaded(session, name, url, c)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            pages = subprocess.Popen(
                [
                    *(sys.executable, __file__, "--role", "dashboards", "--upstream", dash_base),
                    *("--port", str(dashboards), "--out", out.name),
                ]
            )
            ready = Path(out.name + ".ready")
            deadline = time.monotonic() + 60
            while not ready.exists() and time.monotonic() < deadline:  # every page open first
                await asyncio.sleep(0.05)
            ready.unlink(missing_ok=True)
            await asyncio.sleep(0.5)  # the pages' process settled (it started just now)
            try:  # CPU counted from here: what the open pages cost while calls are made
                return await loaded(session, name, url, c)
            finally:
                pages.terminate()
                pages.wait(30)
                with contextlib.suppress(ValueError):
                    for k, v in json.loads(Path(out.name).read_text() or "{}").items():
                        counts[k] = counts.get(k, 0) + v

    async with aiohttp.ClientSession(connector=client_connector()) as session:
        for url in targets.values():  # warm up connections and code paths
            await load(session, url, CHAT_BODY, 10, 0.5)
        for c in (1, 10, 100):
            lat: dict[str, list[float]] = {k: [] for k in targets}
            rps: dict[str, list[float]] = {k: [] for k in targets}
            cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            for _ in range(rounds):  # interleaved rounds: drift on a shared machine hits all alike
                for name, url in targets.items():
                    values, r, used = await measured(session, name, url, c)
                    cpu[name] += used
                    lat[name].extend(values)
                    rps[name].append(r)
            row: dict[str, Any] = {}
            for name in targets:
                # CPU of the serving process per request: robust to other load on a shared machine
                # (for "direct" that is the upstream alone; the proxies' figures exclude the upstream)
                row[name] = {
                    "p50_ms": round(pct(lat[name], 50), 3),
                    "p99_ms": round(pct(lat[name], 99), 3),
                    "rps": round(statistics.mean(rps[name])),
                    "n": len(lat[name]),
                    "cpu_us_per_req": round(cpu[name] / len(lat[name]) * 1e6),
                }
            for name in ("bare", "bare_lean", "llmbudget", "llmbudget_dashboards"):
                if name not in row:
                    continue
                row[f"added_{name}"] = {
                    "p50_ms": round(row[name]["p50_ms"] - row["direct"]["p50_ms"], 3),
                    "p99_ms": round(row[name]["p99_ms"] - row["direct"]["p99_ms"], 3),
                }
            results[f"c{c}"] = row
        stream_urls = {k: v for k, v in targets.items() if k != "llmbudget_dashboards"}
        fb: dict[str, list[float]] = {k: [] for k in stream_urls}
        for _ in range(rounds):
            for name, url in stream_urls.items():
                fb[name].extend(await first_byte(session, url, 100))
        results["first_byte_ms"] = {k: round(pct(v, 50), 3) for k, v in fb.items()}
        results["first_byte_ms"]["added_llmbudget"] = round(
            results["first_byte_ms"]["llmbudget"] - results["first_byte_ms"]["direct"], 3
        )
        results["rss_mb_200_streams"] = round(
            await open_streams(session, targets["llmbudget"], 200, pids["llmbudget"]), 1
        )
        results["rss_mb_idle_after"] = round(rss_mb(pids["llmbudget"]), 1)
    return results


def verdict(r: dict[str, Any]) -> dict[str, bool]:
    c1 = r["c1"]["added_llmbudget"]
    out = {"c1_added_p50_le_0.5ms": c1["p50_ms"] <= 0.5, "c1_added_p99_le_3ms": c1["p99_ms"] <= 3.0}
    for c in ("c10", "c100"):
        row = r[c]
        out[f"{c}_rps_ge_0.85x_bare"] = row["llmbudget"]["rps"] >= 0.85 * row["bare"]["rps"]
        out[f"{c}_cpu_le_1.3x_bare"] = (
            row["llmbudget"]["cpu_us_per_req"] <= 1.3 * row["bare"]["cpu_us_per_req"]
        )
    out["first_byte_le_1ms_later"] = r["first_byte_ms"]["added_llmbudget"] <= 1.0
    out["rss_le_100mb"] = r["rss_mb_200_streams"] <= 100
    return out


def main(argv: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the whole benchmark; returns the figures (also printed as JSON when run directly)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter rounds")
    ap.add_argument(
        "--dashboards", type=int, default=0, metavar="N", help="also measure with N open live dashboards"
    )
    ap.add_argument("--role", choices=["upstream", "bare", "bare_lean", "dashboards"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    args = ap.parse_args(argv or [])
    args.quick = args.quick or quick
    if args.role == "upstream":
        run_upstream(args.port)
        return {}
    if args.role in ("bare", "bare_lean"):
        run_bare(args.port, args.upstream, lean=args.role == "bare_lean")
        return {}
    if args.role == "dashboards":
        run_dashboards(args.upstream, args.port, args.out)
        return {}

    seconds, rounds = (1.0, 2) if args.quick else (2.0, 3)
    py = sys.executable
    here = str(Path(__file__).resolve())
    up_port, bare_port, lean_port, llmb_port = free_port(), free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "llmbudget.yaml"
        cfg.write_text(f"backends:\n  openai: {{kind: openai, base_url: {upstream}, provider: openai}}\n")
        env = {**os.environ, "LLMBUDGET_HOME": tmp}
        llmb_cmd = [
            str(Path(py).parent / "llmbudget"),
            "serve",
            "--config",
            str(cfg),
            "--db",
            f"sqlite:///{tmp}/bench.db",
            "--port",
            str(llmb_port),
            "--log-level",
            "warning",
        ]
        try:
            procs.append(subprocess.Popen([py, here, "--role", "upstream", "--port", str(up_port)]))
            wait_port(up_port)
            procs.append(
                subprocess.Popen(
                    [py, here, "--role", "bare", "--port", str(bare_port), "--upstream", upstream]
                )
            )
            procs.append(
                subprocess.Popen(
                    [py, here, "--role", "bare_lean", "--port", str(lean_port), "--upstream", upstream]
                )
            )
            procs.append(subprocess.Popen(llmb_cmd, env=env, stderr=subprocess.DEVNULL))
            wait_port(bare_port)
            wait_port(lean_port)
            wait_port(llmb_port)
            targets = {
                "direct": f"{upstream}/v1/chat/completions",
                "bare": f"http://127.0.0.1:{bare_port}/openai/v1/chat/completions",
                "bare_lean": f"http://127.0.0.1:{lean_port}/openai/v1/chat/completions",
                "llmbudget": f"http://127.0.0.1:{llmb_port}/openai/v1/chat/completions",
            }
            import uvloop

            pids = {
                "direct": procs[0].pid,
                "bare": procs[1].pid,
                "bare_lean": procs[2].pid,
                "llmbudget": procs[3].pid,
            }
            counts: dict[str, int] = {}
            results = uvloop.run(measure(targets, seconds, rounds, pids, args.dashboards, counts))
            if args.dashboards:
                # what the open dashboards received: increments, resyncs (a slow reader's catch-up)
                results["dashboards"] = {"open": args.dashboards, "received": counts}
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        from llmbudget.store import open_ledger

        with open_ledger(f"sqlite:///{tmp}/bench.db", audit=False) as ledger:
            results["events_recorded"] = ledger.count()  # every proxied call was metered
    results["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "note": "upstream, both proxies and the load generator share these cores; "
        "the machine is shared with other work",
    }
    results["targets_met"] = verdict(results)
    return results


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    if figures:  # the server roles return nothing
        print(json.dumps(figures, indent=2))
