"""`llmbudget serve` as its own process: started from this tree's venv, waited for, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from .servers import free_port

#: the console script installed with this tree (`pip install -e .`), never one found on PATH
LLMBUDGET = Path(sys.executable).with_name("llmbudget")


@dataclass
class ServeProcess:
    url: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def logs(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        return self.stdout.read_text("utf-8", "replace") + self.stderr.read_text("utf-8", "replace")


@contextlib.contextmanager
def serve_process(
    config: Path, db: str, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[ServeProcess]:
    """Run `llmbudget serve --config CONFIG --db DB` on a free port until the block ends (SIGTERM, then SIGKILL)."""
    port = free_port()
    out, err = config.with_name(f"serve-{port}.out"), config.with_name(f"serve-{port}.err")
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [str(LLMBUDGET), "serve", "--config", str(config), "--db", db, "--port", str(port), *args],
            stdout=o,
            stderr=e,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    running = ServeProcess(url=url, proc=proc, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llmbudget serve exited with {proc.returncode}:\n{running.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llmbudget serve did not answer /healthz:\n{running.logs()}")
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
