"""Calls answered vs recorded when `llmbudget serve` is killed with SIGKILL under load.

Two scenarios, each `llmbudget serve` in its own process in front of a fast fake upstream, driven
at concurrency 20 (half streamed, half not) by an aiohttp client in this process:

- `sqlite`: load for a few seconds, `kill -9`, restart on the same file;
- `postgres`: the ledger reaches a dedicated PostgreSQL database through a TCP relay; after a few
  seconds of load the relay is cut (a 20 s outage), the server is killed with SIGKILL halfway
  through it, the relay is restored and the server restarted.

A call counts as answered when its whole answer arrived (status 200, JSON parsed or the stream's
`[DONE]` seen). After the restart the ledger is read directly: `lost` = answered calls missing,
`doubled` = rollup calls minus stored events (a replayed event counted twice would show there).
Target: 0 lost, 0 doubled.

    .venv/bin/python bench/bench_sigkill.py [--quick] [sqlite|postgres ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from proxy_overhead import CHAT_BODY, STREAM_BODY, free_port, wait_port  # noqa: E402

PG_ADMIN = os.environ.get("LLMBUDGET_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CONCURRENCY = 20


class Load:
    """`concurrency` aiohttp workers calling the proxy until stopped; keeps the ids of answered calls."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.concurrency = concurrency
        self.answered: list[str] = []
        self.failed = 0
        self.stopping = False

    async def run(self) -> None:
        import aiohttp

        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=10)) as s:
            await asyncio.gather(*(self._worker(s, i) for i in range(self.concurrency)))

    async def _worker(self, s: Any, i: int) -> None:
        k = 0
        while not self.stopping:
            k += 1
            stream = (i + k) % 2 == 0
            try:
                async with s.post(
                    self.url,
                    data=STREAM_BODY if stream else CHAT_BODY,
                    headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench"},
                ) as r:
                    body = await r.read()
                    ok = r.status == 200 and (b"data: [DONE]" in body if stream else bool(json.loads(body)))
                    if ok:
                        self.answered.append(r.headers["x-llmbudget-request-id"])
                    else:
                        self.failed += 1
            except Exception:
                self.failed += 1
                await asyncio.sleep(0.05)


def _serve(cfg: Path, db: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        str(Path(sys.executable).parent / "llmbudget"),
        "serve",
        "--config",
        str(cfg),
        "--db",
        db,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_health(port: int, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"llmbudget serve on port {port} did not answer /healthz")


async def _drive(load: Load, plan: list[tuple[float, Any]]) -> None:
    """Run the load while carrying out `plan`: (seconds after start, action) in order."""
    task = asyncio.ensure_future(load.run())
    t0 = time.monotonic()
    for at, action in plan:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        action()
    load.stopping = True
    await task


def scenario(kind: str, quick: bool) -> dict[str, Any]:
    from llmbudget.store import open_ledger

    warm = 2.0 if quick else 4.0
    outage = 8.0 if quick else 20.0
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LLMBUDGET_HOME": tmp}
        up_port = free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "proxy_overhead.py"), "--role", "upstream", "--port", str(up_port)]
        )
        relay = None
        dbname = None
        try:
            wait_port(up_port)
            cfg = Path(tmp) / "llmbudget.yaml"
            cfg.write_text(
                f"backends:\n  openai: {{kind: openai, base_url: http://127.0.0.1:{up_port}, provider: openai}}\n"
            )
            if kind == "sqlite":
                db = f"sqlite:///{tmp}/ledger.db"
            else:
                import psycopg
                from fakes.tcpproxy import TcpRelay

                dbname = f"llmb_bench_{uuid.uuid4().hex[:10]}"
                with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                    admin.execute(f'CREATE DATABASE "{dbname}"')
                relay = TcpRelay(("127.0.0.1", 5432)).start()
                db = f"{PG_ADMIN.rsplit('@', 1)[0]}@127.0.0.1:{relay.port}/{dbname}"
            port = free_port()
            proc = _serve(cfg, db, port, env)
            _wait_health(port)
            load = Load(f"http://127.0.0.1:{port}/openai/v1/chat/completions", CONCURRENCY)
            killed_at: dict[str, float] = {}

            def kill() -> None:
                killed_at["answered"] = len(load.answered)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

            if kind == "sqlite":
                plan = [(warm, kill)]
            else:
                assert relay is not None
                plan = [(warm, relay.cut), (warm + outage / 2, kill)]
            import uvloop

            uvloop.run(_drive(load, plan))
            if relay is not None:
                time.sleep(max(0.0, outage / 2 - 0.5))  # the rest of the outage, with no server running
                relay.restore()
            t0 = time.monotonic()
            port = free_port()
            proc = _serve(cfg, db, port, env)
            _wait_health(port)
            restart_s = time.monotonic() - t0
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
            try:
                led = open_ledger(db, replay_audit=False)
            except TypeError:  # a version of llmbudget without the replay (to compare)
                led = open_ledger(db)
            with led:
                answered = set(load.answered)
                stored = led.count()
                lost = sum(1 for i in answered if led.get(i) is None)
                rows = led.costs(since=None, until=None)
                rollup_calls = sum(r.calls for r in rows)
        finally:
            upstream.send_signal(signal.SIGINT)
            upstream.wait(10)
            if relay is not None:
                relay.stop()
            if dbname is not None:
                import psycopg

                with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return {
        "answered": len(answered),
        "recorded": stored,
        "lost": lost,
        "doubled": rollup_calls - stored,
        "recorded_not_answered": stored - (len(answered) - lost),
        "failed_calls": load.failed,
        "restart_with_replay_s": round(restart_s, 2),
        "outage_s": outage if kind == "postgres" else 0,
        "load_before_kill_s": warm if kind == "sqlite" else warm + outage / 2,
    }


def main(argv: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter load and outage")
    ap.add_argument("scenarios", nargs="*", metavar="sqlite|postgres", help="default: both")
    args = ap.parse_args(argv or [])
    kinds = args.scenarios or ["sqlite", "postgres"]
    if bad := set(kinds) - {"sqlite", "postgres"}:
        ap.error(f"unknown scenario {sorted(bad)[0]!r}; sqlite or postgres")
    out: dict[str, Any] = {}
    for kind in kinds:
        out[f"sigkill_{kind}"] = scenario(kind, args.quick or quick)
    out["concurrency"] = CONCURRENCY
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
