"""How long a Codex-shaped run takes through the proxy: over WebSocket, or refused and retried.

usage: .venv/bin/python bench/bench_ws_codex_run.py [--runs N]   (`main(quick=True)`: 10 runs)

Starts the fake OpenAI WebSocket upstream (tests/fakes/ws_upstream.py) and the proxy (real
uvicorn on 127.0.0.1, SQLite ledger), then times N Codex-shaped runs: connect to
`/openai/v1/responses` with Codex's headers, send one `response.create`, read until
`response.completed`. When the proxy refuses the upgrade (a build without the WebSocket relay),
it times the refusal instead and adds what Codex does on a refused upgrade (codex-rs
core/src/responses_retry.rs: the turn is retried `stream_max_retries` times, 5 by default, with
exponential backoff from 200 ms, before `try_switch_fallback_transport` moves it to HTTPS; only a
426 falls back at once). Prints p50/p90 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import websockets.exceptions
import websockets.sync.client as wsclient
from fakes import ws_upstream as fx
from fakes.servers import running_proxy
from fakes.ws_upstream import FakeWebSocketUpstream

from llmbudget.config import Config

HEADERS = {
    "user-agent": "codex_cli_rs/0.172.0 (Ubuntu 24.4.0; x86_64) xterm-256color",
    "originator": "codex_cli_rs",
    "session-id": "bench",
    "authorization": "Bearer sk-bench",
}
#: Codex: retries of a turn before it falls back to HTTPS, and its backoff (ms) before retry n
CODEX_MAX_RETRIES = 5


def codex_backoff_ms(n: int) -> float:
    return 200.0 * 2 ** (n - 1)


def one_run(url: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        with wsclient.connect(url, additional_headers=HEADERS, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "response.create", "model": fx.RESPONSES_MODEL, "input": "hi"}))
            while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
                pass
        return "relayed", (time.perf_counter() - t0) * 1000
    except websockets.exceptions.InvalidStatus as e:
        return f"refused {e.response.status_code}", (time.perf_counter() - t0) * 1000


def main(runs: int = 50, quick: bool = False) -> dict[str, float | str]:
    if quick:
        runs = 10
    fake = FakeWebSocketUpstream().start()
    cfg = Config.model_validate({"backends": {"openai": {"kind": "openai", "base_url": fake.url}}})
    try:
        with tempfile.TemporaryDirectory() as tmp, running_proxy(cfg, Path(tmp) / "ledger.db") as proxy:
            url = proxy.url.replace("http://", "ws://") + "/openai/v1/responses"
            one_run(url)  # warm-up
            results = [one_run(url) for _ in range(runs)]
    finally:
        fake.stop()
    outcome = results[0][0]
    ms = sorted(t for _, t in results)
    p50, p90 = statistics.median(ms), ms[int(len(ms) * 0.9) - 1]
    out: dict[str, float | str] = {"outcome": outcome, "p50_ms": round(p50, 2), "p90_ms": round(p90, 2)}
    print(f"{outcome}: {runs} runs, p50 {p50:.2f} ms, p90 {p90:.2f} ms per attempt")
    if outcome.startswith("refused") and outcome != "refused 426":
        waits = sum(codex_backoff_ms(n) for n in range(1, CODEX_MAX_RETRIES + 1))
        total = (CODEX_MAX_RETRIES + 1) * p50 + waits
        out["codex_before_fallback_ms"] = round(total, 1)
        print(
            f"Codex: {CODEX_MAX_RETRIES + 1} refused upgrades + {waits:.0f} ms backoff = {total:.0f} ms "
            "before its HTTPS fallback starts"
        )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    main(parser.parse_args().runs)
