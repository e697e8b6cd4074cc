"""Budget reservation throughput and latency: reserve + settle per call, per counter store.

usage: .venv/bin/python bench/bench_budget.py [--calls N] [--threads T] [--pg URL] [--redis URL]
Prints one line per store: calls/s and p50/p99 of admit (reserve) and settle, in microseconds.
`main()` returns the same figures as a dict (bench/run_all.py); `main(quick=True)` runs 400 calls.

Admit is what a call waits for before it is forwarded; settle runs after the answer. On
PostgreSQL each is one function call; settle waits for the WAL flush (durable), admit does not,
so on a busy disk settle dominates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

from llmbudget.admission import CallInfo
from llmbudget.budget.factory import build_enforcer
from llmbudget.config import parse_config
from llmbudget.events import UsageEvent

CONFIG = """backends:
  claude: {kind: anthropic, base_url: https://api.anthropic.com}
budgets:
  daily_limit_usd: 1000000
  monthly_limit_usd: 1000000
  per_backend: {claude: 1000000/month}
  limits:
    - {scope: agent, limit_usd: 1000000, period: 5h}
"""


def run(name: str, db_url: str, extra: str, calls: int, threads: int) -> dict[str, float]:
    cfg, _ = parse_config(CONFIG + extra, "bench.yaml")
    enf = build_enforcer(
        cfg, db_url, price_fn=lambda *a: Decimal("0.001"), redis_prefix=f"llmbbench:{uuid.uuid4().hex[:6]}:"
    )
    admit_us: list[float] = []
    settle_us: list[float] = []
    lock = threading.Lock()
    ev = UsageEvent(backend="claude", model="m", cost_usd=Decimal("0.0005"), price_status="priced")

    def worker(n: int, agent: str) -> None:
        a_l, s_l = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            adm = enf.admit(CallInfo("claude", "anthropic", "anthropic", "m", 100, 100, agent=agent))
            t1 = time.perf_counter()
            enf.settle(adm, ev)
            t2 = time.perf_counter()
            a_l.append((t1 - t0) * 1e6)
            s_l.append((t2 - t1) * 1e6)
        with lock:
            admit_us.extend(a_l)
            settle_us.extend(s_l)

    start = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(calls // threads, f"a{i}")) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - start

    def pct(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100)[int(q) - 1]

    print(
        f"{name:9s} threads={threads} calls={len(admit_us)} {len(admit_us) / wall:8.0f} calls/s  "
        f"admit p50={pct(admit_us, 50):7.0f}us p99={pct(admit_us, 99):7.0f}us  "
        f"settle p50={pct(settle_us, 50):7.0f}us p99={pct(settle_us, 99):7.0f}us"
    )
    enf.close()
    return {
        "calls_per_s": round(len(admit_us) / wall),
        "admit_p50_us": round(pct(admit_us, 50)),
        "admit_p99_us": round(pct(admit_us, 99)),
        "settle_p50_us": round(pct(settle_us, 50)),
        "settle_p99_us": round(pct(settle_us, 99)),
    }


def main(
    quick: bool = False,
    *,
    calls: int | None = None,
    threads: int = 4,
    pg: str = "postgresql://postgres@127.0.0.1:5432/postgres",
    redis: str = "redis://127.0.0.1:6379/0",
) -> dict[str, float]:
    """Every store's figures, flattened: `{"postgres_admit_p50_us": ..., ...}`."""
    n = calls or (400 if quick else 2000)
    out: dict[str, float] = {}

    def keep(store: str, figures: dict[str, float]) -> None:
        out.update({f"{store}_{k}": v for k, v in figures.items()})

    with tempfile.TemporaryDirectory() as d:
        keep("sqlite", run("sqlite", f"sqlite:///{Path(d) / 'b.db'}", "", n, threads))
    import psycopg

    name = f"llmb_bench_{uuid.uuid4().hex[:8]}"  # a scratch database, dropped afterwards
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        keep("postgres", run("postgres", pg.rsplit("/", 1)[0] + "/" + name, "", n, threads))
    finally:
        with psycopg.connect(pg, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    with tempfile.TemporaryDirectory() as d:
        keep("redis", run("redis", f"sqlite:///{Path(d) / 'r.db'}", f"  redis_url: {redis}\n", n, threads))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    main(calls=args.calls, threads=args.threads, pg=args.pg, redis=args.redis)
