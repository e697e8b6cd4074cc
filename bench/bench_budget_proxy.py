"""What a budget costs the proxy: `llmbudget serve` with no `budgets:` block vs a daily $100,000
limit that never binds, with the counters in SQLite, PostgreSQL and Redis, interleaved in one run.

Pairs compared (same ledger on both sides of each):

- sqlite: ledger and counters in one SQLite file, vs the same ledger without budgets;
- postgres: ledger and counters in PostgreSQL (127.0.0.1:5432), vs the same without budgets;
- redis: SQLite ledger, counters in Redis (127.0.0.1:6379), vs SQLite without budgets.

Reports for each server p50/p99 at concurrency 1, 10, 100 and requests/s, and for each store the
added p50 at c=1 (budget minus none) and the throughput ratio at c=100 (budget / none).

    .venv/bin/python bench/bench_budget_proxy.py            # ~2 min
    .venv/bin/python bench/bench_budget_proxy.py --quick    # ~1 min

Targets (README, Benchmarks): a non-binding budget adds <= 0.3 ms at c=1 and keeps >= 0.8x the
throughput at c=100, on every counter store.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_overhead import CHAT_BODY, client_connector, cpu_s, free_port, load, pct, quiet, wait_port

PG_ADMIN = os.environ.get("LLMBUDGET_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("LLMBUDGET_BENCH_REDIS", "redis://127.0.0.1:6379/14")
BUDGET = "budgets:\n  daily_limit_usd: 100000\n  hard_stop: true\n"


def _config(tmp: Path, name: str, upstream: str, budget: str) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        f"backends:\n  openai: {{kind: openai, base_url: {upstream}, provider: openai}}\n" + budget
    )
    return cfg


async def _measure(
    targets: dict[str, str], pids: dict[str, list[int]], seconds: float, rounds: int
) -> dict[str, Any]:
    import aiohttp

    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=client_connector()) as session:
        for url in targets.values():  # warm up connections, code paths and counters
            await load(session, url, CHAT_BODY, 10, 0.5)
        for c in (1, 10, 100):
            lat: dict[str, list[float]] = {k: [] for k in targets}
            rps: dict[str, list[float]] = {k: [] for k in targets}
            cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            for _ in range(rounds):  # interleaved: load drift on a shared machine hits all alike
                for name, url in targets.items():
                    await quiet()  # the previous server's leftover work is not counted against this one
                    before = sum(cpu_s(p) for p in pids[name])
                    values, r = await load(session, url, CHAT_BODY, c, seconds)
                    cpu[name] += sum(cpu_s(p) for p in pids[name]) - before
                    lat[name].extend(values)
                    rps[name].append(r)
            out[f"c{c}"] = {
                name: {
                    "p50_ms": round(pct(lat[name], 50), 3),
                    "p99_ms": round(pct(lat[name], 99), 3),
                    "rps": round(statistics.mean(rps[name])),
                    "cpu_us_per_req": round(cpu[name] / max(1, len(lat[name])) * 1e6),
                }
                for name in targets
            }
    return out


PAIRS = {"sqlite": "none_sqlite", "postgres": "none_postgres", "redis": "none_sqlite"}


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """Added p50 at c=1 and throughput ratio at c=100 of each counter store vs no budget."""
    out: dict[str, Any] = {}
    for store, base in PAIRS.items():
        name = f"budget_{store}"
        if name not in r["c1"]:
            continue
        added = r["c1"][name]["p50_ms"] - r["c1"][base]["p50_ms"]
        ratio = r["c100"][name]["rps"] / max(1, r["c100"][base]["rps"])
        out[store] = {
            "added_p50_c1_ms": round(added, 3),
            "rps_c100": r["c100"][name]["rps"],
            "rps_c100_none": r["c100"][base]["rps"],
            "rps_ratio_c100": round(ratio, 2),
            "c1_le_0.3ms": added <= 0.3,
            "c100_ge_0.8x": ratio >= 0.8,
        }
    return out


def main(argv: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the comparison; returns the figures (printed as JSON when run directly)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter rounds")
    ap.add_argument("--workers", type=int, default=1, help="llmbudget serve --workers N for every server")
    ap.add_argument("--only", default="", help="comma-separated stores (sqlite,postgres,redis)")
    args = ap.parse_args(argv or [])
    quick = args.quick or quick
    # three interleaved rounds: one disturbed round on a shared machine moves the mean less
    seconds, rounds = (1.0, 2) if quick else (2.0, 3)
    stores = [s for s in (args.only.split(",") if args.only else list(PAIRS)) if s]

    import psycopg
    import redis as redis_lib

    py = sys.executable
    here = str(Path(__file__).resolve().parent / "proxy_overhead.py")
    llmbudget = str(Path(py).parent / "llmbudget")
    pg_name = f"llmb_bench_{uuid.uuid4().hex[:8]}"
    pg_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_name
    redis_prefix_db = REDIS
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        servers: dict[str, tuple[str, str]] = {"none_sqlite": (f"sqlite:///{tmp}/none.db", "")}
        if "sqlite" in stores:
            servers["budget_sqlite"] = (f"sqlite:///{tmp}/budget.db", BUDGET)
        if "postgres" in stores:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{pg_name}"')
                admin.execute(f'CREATE DATABASE "{pg_name}_b"')
            servers["none_postgres"] = (pg_url, "")
            servers["budget_postgres"] = (pg_url + "_b", BUDGET)
        if "redis" in stores:
            redis_lib.Redis.from_url(redis_prefix_db).flushdb()
            servers["budget_redis"] = (
                f"sqlite:///{tmp}/redis.db",
                BUDGET + f"  redis_url: {redis_prefix_db}\n",
            )
        ports = {name: free_port() for name in servers}
        try:
            procs["upstream"] = subprocess.Popen([py, here, "--role", "upstream", "--port", str(up_port)])
            wait_port(up_port)
            for name, (db, budget) in servers.items():
                cfg = _config(tmp, name, upstream, budget)
                home = tmp / name
                home.mkdir()
                cmd = [llmbudget, "serve", "--config", str(cfg), "--db", db, "--port", str(ports[name])]
                cmd += ["--log-level", "warning"]
                if args.workers > 1:
                    cmd += ["--workers", str(args.workers)]
                procs[name] = subprocess.Popen(
                    cmd, env={**os.environ, "LLMBUDGET_HOME": str(home)}, stderr=subprocess.DEVNULL
                )
            for name in servers:
                wait_port(ports[name])
            targets = {n: f"http://127.0.0.1:{p}/openai/v1/chat/completions" for n, p in ports.items()}
            pids = {n: _tree(procs[n].pid) for n in servers}
            import uvloop

            results = uvloop.run(_measure(targets, pids, seconds, rounds))
        finally:
            for p in reversed(list(procs.values())):
                p.send_signal(signal.SIGINT)
            for p in procs.values():
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            if "postgres" in stores:
                with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
                    admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}_b" WITH (FORCE)')
    results["summary"] = summary(results)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "workers": args.workers,
        "note": "upstream, every server and the load generator share these cores; "
        "the machine is shared with other work",
    }
    return results


def _tree(pid: int) -> list[int]:
    """The server process and its children (`--workers N`), for CPU accounting."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out.extend(_tree(int(k)))
    return out


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    print(json.dumps(figures, indent=2))
