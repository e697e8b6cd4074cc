"""Scaling `llmbudget serve` out: `--workers 2` vs one process, and two replicas vs one on a shared
PostgreSQL ledger with Redis counters, each comparison side by side in one run (interleaved rounds).

Every server has the same non-binding budget (a daily $100,000 limit, `hard_stop: true`) in front
of the same fast fake upstream (bench/proxy_overhead.py). The setups, each on its own storage:

- `sqlite_w1` / `sqlite_w2`: ledger and counters in one SQLite file; `serve` vs `serve --workers 2`;
- `pgredis_w1`: PostgreSQL ledger (127.0.0.1:5432, a fresh database), counters in Redis
  (127.0.0.1:6379, their own key prefix), one `serve`;
- `pgredis_r2`: the same storage kind, two separate `serve` processes on two ports sharing one
  database and one Redis prefix; the load generator sends each request to the next port in turn;
- `pgredis_w2` (with `--stores sqlite,pgredis`): PostgreSQL + Redis, `serve --workers 2`.

For each setup: p50/p99 at concurrency 1, 10 and 100, requests/s, and CPU per request of all its
serving processes (the supervisor and workers included). Each comparison reports p50 at c=1 for
both sides, requests/s at c=10 and c=100 for both sides and their ratio (2 / 1).
`cpu_s_by_process` shows how the work spread: a `--workers` setup lists its supervisor (idle)
then each worker, a replicas setup each replica.

After the load the servers are stopped (gracefully) and each setup's storage is checked: the
calls answered (warm-up included) against the rows in `events`, and the budget counter's spent
(`llmbudget budget --json`: `spent` + `drift`, i.e. the counter as the gates left it, before that
report reconciled it) against the ledger's cost for the day (`llmbudget costs --since today
--json`), and nothing left reserved. The servers run with `reconcile_interval_s: 0` (no periodic
reconciliation) so the counter checked is what the settlements made of it, not a copy of the
ledger; `--reconcile-s 5` measures with the default instead.

    .venv/bin/python bench/bench_scale.py                          # both comparisons, ~2 min
    .venv/bin/python bench/bench_scale.py --compare workers        # sqlite_w1 vs sqlite_w2
    .venv/bin/python bench/bench_scale.py --compare workers --stores sqlite,pgredis
    .venv/bin/python bench/bench_scale.py --compare replicas       # pgredis_w1 vs pgredis_r2
    .venv/bin/python bench/bench_scale.py --quick                  # 1 s rounds, 2 of them
    .venv/bin/python bench/bench_scale.py --seconds 0.5 --rounds 1 # a smoke run

The fake upstream, every server and the load generator (one aiohttp process) share the machine's
cores: on 2 cores a second worker competes with them, so the ratios there are lower bounds of
what a larger host shows; CPU per request is the steadier figure on a busy machine. With
SO_REUSEPORT the kernel assigns each keep-alive connection to one worker: at c=1 one worker
serves every call, at c=10 the split of 10 connections may be uneven.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_budget_proxy import PG_ADMIN, REDIS, _tree
from proxy_overhead import CHAT_BODY, client_connector, cpu_s, free_port, pct, wait_port

COMPARISONS = {
    "workers": {"sqlite": ("sqlite_w1", "sqlite_w2"), "pgredis": ("pgredis_w1", "pgredis_w2")},
    "replicas": {"pgredis": ("pgredis_w1", "pgredis_r2")},
}


@dataclass
class Setup:
    """One configuration under test: its storage, its `serve` processes and their ports."""

    name: str
    storage: str  # sqlite | pgredis
    workers: int = 1
    replicas: int = 1
    db: str = ""
    config: Path = Path()
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    answered: int = 0

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}/openai/v1/chat/completions" for p in self.ports]


def _setups(compare: list[str], stores: list[str]) -> dict[str, Setup]:
    wanted: list[str] = []
    for c in compare:
        for store, pair in COMPARISONS[c].items():
            if c == "workers" and store not in stores:
                continue
            wanted += [n for n in pair if n not in wanted]
    out = {}
    for n in wanted:
        storage, kind = n.split("_")
        count = int(kind[1:])
        out[n] = Setup(
            n,
            storage,
            workers=count if kind[0] == "w" else 1,
            replicas=count if kind[0] == "r" else 1,
        )
    return out


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:`port` (one per `--workers` process: SO_REUSEPORT)."""
    want = f"0100007F:{port:04X}"
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        n += parts[1] == want and parts[3] == "0A"
    return n


def _wait_ready(s: Setup, logs: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for port in s.ports:
        wait_port(port, timeout)
        while _listeners(port) < s.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{s.name}: {s.workers} workers never listened on {port}")
            time.sleep(0.05)
    for p in s.procs:
        if p.poll() is not None:
            raise RuntimeError(f"{s.name} exited: {(logs / f'{s.name}.log').read_text()[-2000:]}")


async def load_spread(
    session: Any, urls: list[str], body: bytes, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    """`concurrency` workers send requests back to back for `seconds`, each to the next of `urls`
    in turn (round-robin across replicas); latencies in ms and requests/s."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    turn = itertools.cycle(urls)

    async def worker() -> None:
        while time.perf_counter() < stop:
            url = next(turn)
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.read())[:300]!r}")
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - t0)


async def _measure(setups: dict[str, Setup], seconds: float, rounds: int) -> dict[str, Any]:
    import aiohttp

    out: dict[str, Any] = {}
    start = {p: cpu_s(p) for s in setups.values() for p in s.pids}
    async with aiohttp.ClientSession(connector=client_connector()) as session:
        for s in setups.values():  # warm up connections, code paths, leases
            values, _ = await load_spread(session, s.urls, CHAT_BODY, 10, 0.5)
            s.answered += len(values)
        for c in (1, 10, 100):
            lat: dict[str, list[float]] = {n: [] for n in setups}
            rps: dict[str, list[float]] = {n: [] for n in setups}
            cpu: dict[str, float] = dict.fromkeys(setups, 0.0)
            for _ in range(rounds):  # interleaved: load drift on a shared machine hits all alike
                for n, s in setups.items():
                    before = sum(cpu_s(p) for p in s.pids)
                    values, r = await load_spread(session, s.urls, CHAT_BODY, c, seconds)
                    cpu[n] += sum(cpu_s(p) for p in s.pids) - before
                    s.answered += len(values)
                    lat[n].extend(values)
                    rps[n].append(r)
            out[f"c{c}"] = {
                n: {
                    "p50_ms": round(pct(lat[n], 50), 3),
                    "p99_ms": round(pct(lat[n], 99), 3),
                    "rps": round(statistics.mean(rps[n])),
                    "cpu_us_per_req": round(cpu[n] / max(1, len(lat[n])) * 1e6),
                }
                for n in setups
            }
    # how the work spread over each setup's processes (a `--workers` supervisor only watches)
    out["cpu_s_by_process"] = {n: [round(cpu_s(p) - start[p], 2) for p in s.pids] for n, s in setups.items()}
    return out


def summary(r: dict[str, Any], compare: list[str]) -> dict[str, Any]:
    """Each comparison's figures side by side: p50 at c=1, requests/s at c=10 and c=100, the ratios."""
    out: dict[str, Any] = {}
    for c in compare:
        for store, (one, two) in COMPARISONS[c].items():
            if one not in r["c1"] or two not in r["c1"]:
                continue
            row: dict[str, Any] = {"p50_c1_ms": {n: r["c1"][n]["p50_ms"] for n in (one, two)}}
            for cc in ("c10", "c100"):
                row[f"rps_{cc}"] = {n: r[cc][n]["rps"] for n in (one, two)}
                row[f"rps_ratio_{cc}"] = round(r[cc][two]["rps"] / max(1, r[cc][one]["rps"]), 2)
                row[f"cpu_us_per_req_{cc}"] = {n: r[cc][n]["cpu_us_per_req"] for n in (one, two)}
            out[f"{c}_{store}"] = row
    return out


def _cli(s: Setup, home: Path, *args: str) -> dict[str, Any]:
    llmbudget = str(Path(sys.executable).parent / "llmbudget")
    cmd = [llmbudget, *args, "--json", "--config", str(s.config), "--db", s.db]
    env = {**os.environ, "LLMBUDGET_HOME": str(home)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} ({s.name}): {done.stderr[-1000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _events(s: Setup) -> int:
    """Rows in the setup's `events` table."""
    if s.storage == "sqlite":
        with sqlite3.connect(s.db.removeprefix("sqlite:///")) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    import psycopg

    with psycopg.connect(s.db) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
        assert row is not None
        return int(row[0])


def ledger_check(s: Setup, home: Path) -> dict[str, Any]:
    """Answered calls vs `events` rows, and the daily counter vs the ledger's cost for the day."""
    costs = _cli(s, home, "costs", "--since", "today")
    budget = _cli(s, home, "budget")
    daily = next(b for b in budget["budgets"] if b["name"] == "daily")
    # `budget` reconciles before it reports; `drift` is how far the counter was off just before
    counter_nano = daily["spent_nano"] + daily["drift_nano"]
    events = _events(s)
    cost_nano = costs["total"]["cost_nano"]
    return {
        "answered": s.answered,
        "events_rows": events,
        "costs_calls": costs["total"]["calls"],
        "counter_spent_usd": f"{counter_nano / 1e9:.9f}",
        "ledger_cost_usd": costs["total"]["cost_usd"],
        "budget_ledger_spent_usd": daily["ledger_spent"],
        "reserved_usd": daily["reserved"],
        "drift_usd": daily["drift"],
        "one_event_per_answered_call": events == s.answered == costs["total"]["calls"],
        "counter_equals_ledger": counter_nano == cost_nano == daily["ledger_spent_nano"],
        "nothing_reserved": daily["reserved_nano"] == 0,
    }


def main(argv: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the comparisons; returns the figures (printed as JSON when run directly)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--compare", default="workers,replicas", help="workers, replicas or both (comma-separated)"
    )
    ap.add_argument("--stores", default="sqlite", help="storage of the workers comparison: sqlite,pgredis")
    ap.add_argument("--quick", action="store_true", help="1 s rounds, 2 of them")
    ap.add_argument("--seconds", type=float, help="seconds per round (default 2; --quick 1)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per concurrency (default 3; --quick 2)")
    ap.add_argument(
        "--reconcile-s", type=float, default=0.0, help="budgets.reconcile_interval_s of the servers (0: off)"
    )
    args = ap.parse_args(argv or [])
    quick = args.quick or quick
    seconds = args.seconds or (1.0 if quick else 2.0)
    rounds = args.rounds or (2 if quick else 3)
    compare = [c for c in args.compare.split(",") if c]
    stores = [s for s in args.stores.split(",") if s]
    for c in compare:
        if c not in COMPARISONS:
            ap.error(f"--compare: {c!r} is not one of {', '.join(COMPARISONS)}")
    for st in stores:
        if st not in COMPARISONS["workers"]:
            ap.error(f"--stores: {st!r} is not one of {', '.join(COMPARISONS['workers'])}")
    setups = _setups(compare, stores)

    import psycopg
    import redis as redis_lib

    py = sys.executable
    here = str(Path(__file__).resolve().parent / "proxy_overhead.py")
    llmbudget = str(Path(py).parent / "llmbudget")
    run_id = uuid.uuid4().hex[:8]
    prefix = f"llmb:bench-scale:{run_id}:"
    pg_dbs: list[str] = []
    upstream_proc: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        logs = tmp / "logs"
        logs.mkdir()
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        try:
            upstream_proc = subprocess.Popen([py, here, "--role", "upstream", "--port", str(up_port)])
            wait_port(up_port)
            for s in setups.values():
                budget = "budgets:\n  daily_limit_usd: 100000\n  hard_stop: true\n"
                budget += f"  reconcile_interval_s: {args.reconcile_s}\n"
                if s.storage == "sqlite":
                    s.db = f"sqlite:///{tmp}/{s.name}.db"
                else:
                    name = f"llmb_bench_scale_{run_id}_{s.name}"
                    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                        admin.execute(f'CREATE DATABASE "{name}"')
                    pg_dbs.append(name)
                    s.db = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
                    budget += f"  redis_url: {REDIS}\n  redis_prefix: '{prefix}{s.name}:'\n"
                s.config = tmp / f"{s.name}.yaml"
                s.config.write_text(
                    f"backends:\n  openai: {{kind: openai, base_url: {upstream}, provider: openai}}\n"
                    + budget
                )
                for i in range(s.replicas):  # each replica its own home: audit log and spool
                    home = tmp / f"{s.name}-{i}"
                    home.mkdir()
                    port = free_port()
                    cmd = [llmbudget, "serve", "--config", str(s.config), "--db", s.db, "--port", str(port)]
                    cmd += ["--log-level", "warning"]
                    if s.workers > 1:
                        cmd += ["--workers", str(s.workers)]
                    log = (logs / f"{s.name}.log").open("ab")
                    s.procs.append(
                        subprocess.Popen(cmd, env={**os.environ, "LLMBUDGET_HOME": str(home)}, stderr=log)
                    )
                    s.ports.append(port)
            for s in setups.values():
                _wait_ready(s, logs)
                s.pids = [pid for p in s.procs for pid in _tree(p.pid)]
            import uvloop

            results = uvloop.run(_measure(setups, seconds, rounds))
        finally:
            procs = [p for s in setups.values() for p in s.procs]
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            if upstream_proc is not None:
                upstream_proc.send_signal(signal.SIGINT)
                try:
                    upstream_proc.wait(10)
                except subprocess.TimeoutExpired:
                    upstream_proc.kill()
            try:
                if results:
                    results["summary"] = summary(results, compare)
                    (tmp / "cli").mkdir()
                    results["ledger_check"] = {n: ledger_check(s, tmp / "cli") for n, s in setups.items()}
            finally:
                for name in pg_dbs:
                    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                r = redis_lib.Redis.from_url(REDIS)
                keys = list(r.scan_iter(match=prefix + "*", count=1000))
                for i in range(0, len(keys), 500):
                    r.delete(*keys[i : i + 500])
    results["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "seconds_per_round": seconds,
        "rounds": rounds,
        "reconcile_interval_s": args.reconcile_s,
        "note": "upstream, every server and the load generator share these cores",
    }
    return results


if __name__ == "__main__":
    figures = main(sys.argv[1:])
    print(json.dumps(figures, indent=2))
