"""`llmbudget serve --workers N`: N serving processes on one port, started and watched by this one.

Each worker is `llmbudget serve` itself with its own event loop, binding the port with
SO_REUSEPORT (the kernel spreads connections across them). They share the ledger and the budget
counters exactly as separate replicas do. A worker that dies is started again (after a second
when it died within five seconds of starting); SIGTERM or Ctrl-C stops them all gracefully; if this process is killed, the
workers get SIGTERM (Linux) and finish gracefully.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("llmbudget.serve")
#: set by `serve --workers N` for each worker process it starts (0 .. N-1)
WORKER_ENV = "LLMBUDGET_WORKER_INDEX"

_CHILD = "import sys; from llmbudget.cli import main; sys.exit(main(sys.argv[1:]))"


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM it when this process dies, even by kill -9 (Linux)."""
    try:
        import ctypes  # Linux only, in the worker: not loaded by the supervisor

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers outlive a killed supervisor
        pass


def supervise(args: list[str], workers: int) -> int:
    """Run `workers` copies of `llmbudget <args>` until SIGTERM/SIGINT; returns the exit code."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}

    def spawn(i: int) -> tuple[subprocess.Popen[bytes], float]:
        env = {**os.environ, WORKER_ENV: str(i)}
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=env, preexec_fn=_die_with_parent)
        return proc, time.monotonic()

    procs = {i: spawn(i) for i in range(workers)}
    try:
        while not stopping:
            time.sleep(0.2)
            for i, (p, started) in list(procs.items()):
                code = p.poll()
                if code is None or stopping:
                    continue
                log.error("serve worker_exited worker=%d code=%s: starting it again", i, code)
                if time.monotonic() - started < 5:
                    time.sleep(1)  # a worker that cannot start: do not spin
                procs[i] = spawn(i)
    finally:
        for p, _ in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p, _ in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0
