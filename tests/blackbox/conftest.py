"""Black-box tests: llmbudget run as its own process, the way a user runs it.

Every test here starts this tree's own `llmbudget` console script (next to the running Python),
never one found on PATH. Shared fixtures (use them; add what you need beside them):

- `llmbudget(*args, env=None, timeout=60)` -> `CompletedProcess`: the CLI in its own process.
- `cli_json(*args)` -> the parsed stdout of `llmbudget ARGS --json` (fails the test on exit != 0).
- `fake_upstream` -> `fakes.upstream.FakeUpstream`: fake OpenAI, Anthropic and Gemini APIs on
  127.0.0.1 (a thread server, one per module; `x-fake: MODE` headers pick its behaviour).
- `fake_ws_upstream` -> `fakes.ws_upstream.FakeWebSocketUpstream`: fake OpenAI Responses-over-WebSocket
  and Realtime upstream on 127.0.0.1 (one per module).
- `write_config(**top_level)` -> `Path` of an `llmbudget.yaml` in `tmp_path` whose backends
  `openai`, `anthropic` and `gemini` point at `fake_upstream`, plus any top-level keys given
  (`storage={"flush_interval_s": 0.1}`, `budgets={...}`).
- `serve(config=None, db=None, env=None, args=())` -> `Server`: `llmbudget serve` in its own
  process (own session) on a free port, returned once `/healthz` answers. `config` defaults to
  `write_config()`, `db` to `sqlite:///<tmp_path>/ledger.db`. A `Server` has `url`, `db`,
  `pid`, `openai(**kw)` / `anthropic(**kw)` (official SDK clients pointed at it, no retries),
  `kill()` (SIGKILL), `stop()` (SIGTERM), `restart()` (same config and database, new port),
  `events()` (every event, oldest first, read with `llmbudget export --json` from another
  process) and `logs()`. Servers still running when the test ends are killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fakes.servers import free_port
from fakes.upstream import FakeUpstream
from fakes.ws_upstream import FakeWebSocketUpstream

#: the console script installed with this tree (`pip install -e .`)
LLMBUDGET = Path(sys.executable).with_name("llmbudget")


@pytest.fixture
def llmbudget() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `llmbudget ARGS...` in a subprocess (stdout and stderr piped, text); extra env via env=."""
    assert LLMBUDGET.exists(), f"{LLMBUDGET} is missing: `pip install -e .` in this tree's venv"

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [str(LLMBUDGET), *args], capture_output=True, text=True, env=full_env, timeout=timeout
        )

    return run


@pytest.fixture
def cli_json(llmbudget: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., Any]:
    """`llmbudget ARGS --json` parsed; a non-zero exit fails the test with stderr."""

    def run(*args: str) -> Any:
        done = llmbudget(*args, "--json")
        assert done.returncode == 0, (
            f"llmbudget {' '.join(args)} --json exited {done.returncode}: {done.stderr}"
        )
        return json.loads(done.stdout)

    return run


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fake_ws_upstream() -> Iterator[FakeWebSocketUpstream]:
    server = FakeWebSocketUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def write_config(tmp_path: Path, fake_upstream: FakeUpstream) -> Callable[..., Path]:
    def write(**top_level: Any) -> Path:
        url = fake_upstream.url
        config: dict[str, Any] = {
            "backends": {
                "openai": {"kind": "openai", "base_url": url},
                "anthropic": {"kind": "anthropic", "base_url": url},
                "gemini": {"kind": "gemini", "base_url": url},
            },
            **top_level,
        }
        path = tmp_path / "llmbudget.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


class Server:
    """One `llmbudget serve` process (see the module docstring)."""

    def __init__(self, config: Path, db: str, env: dict[str, str] | None, args: tuple[str, ...]) -> None:
        self.config, self.db, self.env, self.args = config, db, env, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._logs: list[Path] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> Server:
        port = free_port()
        out = self.config.with_name(f"serve-{port}.log")
        self._logs.append(out)
        with out.open("wb") as o:
            self.proc = subprocess.Popen(
                [
                    str(LLMBUDGET),
                    "serve",
                    "--config",
                    str(self.config),
                    "--db",
                    self.db,
                    "--port",
                    str(port),
                    *self.args,
                ],
                stdout=o,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmbudget serve exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"llmbudget serve did not answer /healthz:\n{self.logs()}")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no clean-up, as `kill -9` does."""
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 20 s)."""
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> Server:
        """A new process on the same config and database (after `kill()` or `stop()`)."""
        self.stop()
        return self.start()

    def openai(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/openai/v1", api_key="sk-test", max_retries=0, **kw)

    def anthropic(self, **kw: Any) -> Any:
        import anthropic

        return anthropic.Anthropic(
            base_url=self.url + "/anthropic", api_key="sk-ant-test", max_retries=0, **kw
        )

    def events(self) -> list[dict[str, Any]]:
        """Every event in the database, oldest first, as another process reads it (`llmbudget export --json`)."""
        done = subprocess.run(
            [str(LLMBUDGET), "export", "--json", "--db", self.db, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def logs(self) -> str:
        return "".join(p.read_text("utf-8", "replace") for p in self._logs if p.exists())


@pytest.fixture
def serve(tmp_path: Path, write_config: Callable[..., Path]) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(
        config: Path | None = None,
        db: str | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> Server:
        server = Server(config or write_config(), db or f"sqlite:///{tmp_path / 'ledger.db'}", env, args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


# ---------------------------------------------------------------- browser tests (Playwright + Debian's chromium)
#: the system browser the browser tests drive (`make test` installs Debian's `chromium`); never a downloaded one
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # no DNS look-ups of outside hosts; both EXCLUDEs are needed for local pages
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright, headless, for one test module.

    Started and stopped here rather than through pytest-playwright's session-wide fixtures: the
    sync API keeps an event loop running in the main thread until Playwright stops, and later
    tests that call `asyncio.run` must not find it there.
    """
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context and page (downloads accepted) for one test."""
    context = chromium.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()
