"""A separate OS process hammering one budget counter store (used by test_budget_store.py).

usage: budget_worker.py KIND URL PREFIX THREADS CALLS LIMIT AMOUNT START_AT
Prints one JSON line: {"ok": n, "refused": n, "bad": [...]}.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid

from llmbudget.budget.counters import Charge, PostgresCounters, RedisCounters, SQLiteCounters


def main() -> None:
    kind, url, prefix = sys.argv[1:4]
    threads, calls, limit, amount = (int(x) for x in sys.argv[4:8])
    start_at = float(sys.argv[8])
    store = {
        "sqlite": lambda: SQLiteCounters(url),
        "postgres": lambda: PostgresCounters(url, pool_size=threads),
        "redis": lambda: RedisCounters(url, prefix=prefix),
    }[kind]()
    key = "daily|*|day:2025-01-01"
    results = {"ok": 0, "refused": 0, "bad": []}
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(n):
            rid = uuid.uuid4().hex
            r = store.reserve(rid, [Charge("daily", key, (key,), limit, amount)], 600)
            with lock:
                if r is None:
                    results["ok"] += 1
                else:
                    results["refused"] += 1
                    if r.budget != "daily" or r.limit != limit or r.spent + r.reserved + amount <= limit:
                        results["bad"].append([r.budget, r.spent, r.reserved, r.limit])
            if r is None:
                store.settle(rid, [(key, amount)])

    time.sleep(max(0.0, start_at - time.time()))
    per = calls // threads
    ts = [threading.Thread(target=worker, args=(per,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    store.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
