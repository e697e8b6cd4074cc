"""`llmbudget run -- CMD`: run an agent with its providers' environment pointed at the proxy.

The child gets base URLs for every protocol (`OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`,
`GOOGLE_GEMINI_BASE_URL`) that carry the run's attribution in their path
(`/_llmb/session=S/agent=A/{backend}`, read by the server in `llmbudget.app`), the same as
headers for the clients that read headers from the environment (Claude Code's
`ANTHROPIC_CUSTOM_HEADERS`, Gemini CLI's `GEMINI_CLI_CUSTOM_HEADERS`, Codex through
`-c model_providers...` overrides) and as `LLMBUDGET_AGENT` / `LLMBUDGET_SESSION` for `wrap()`.

The proxy is a running `llmbudget serve` when one answers, else one started in this process on
a free loopback port. The in-process proxy also stamps the run's session (and agent) on calls
that come without the prefix (code that builds URLs from `LLMBUDGET_PROXY_URL`), and it is
always used with `--budget`:
the run's limit is a `session`-scoped budget added to that proxy's gate, counted in the ledger's
database like every other budget.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .app import build_app
from .attribution import AttributionRule
from .budget.config import BudgetsConfig, LimitConfig
from .capture.paths import prefix_path, prefix_refusal
from .config import Config
from .errors import CommandNotRun, LLMBudgetError
from .events import TOKEN_FIELDS, UsageEvent
from .money import ZERO, decimal_str
from .services import Services
from .wire import OPENAI, PROTOCOLS

#: the provider id `llmbudget run` gives Codex (its session logs name it; `import codex` skips them)
CODEX_PROVIDER = "llmbudget"


@dataclass(slots=True)
class RunSummary:
    """What one run cost, read back from the ledger by its session."""

    session: str
    calls: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))
    #: model -> [calls, cost (priced calls), unpriced calls]
    models: dict[str, list[Any]] = field(default_factory=dict)
    cost_usd: Decimal = ZERO
    unpriced: int = 0
    blocked: int = 0

    def add(self, ev: UsageEvent) -> None:
        if ev.status == "blocked":
            self.blocked += 1
            return
        self.calls += 1
        for k in TOKEN_FIELDS:
            self.tokens[k] += getattr(ev, k)
        row = self.models.setdefault(ev.model or "(unknown)", [0, ZERO, 0])
        row[0] += 1
        if ev.cost_usd is None:
            row[2] += 1
            self.unpriced += 1
        else:
            row[1] += ev.cost_usd
            self.cost_usd += ev.cost_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "calls": self.calls,
            "blocked": self.blocked,
            "tokens": dict(self.tokens),
            "cost_usd": decimal_str(self.cost_usd),
            "unpriced_calls": self.unpriced,
            "models": [
                {
                    "model": m,
                    "calls": c,
                    "cost_usd": None if u == c else decimal_str(cost),
                    "unpriced_calls": u,
                }
                for m, (c, cost, u) in sorted(self.models.items())
            ],
        }


def new_session_id() -> str:
    """A fresh run session id: `run-` and 12 hex digits."""
    return f"run-{uuid.uuid4().hex[:12]}"


def probe_server(url: str, timeout: float = 0.5) -> bool:
    """True when a `llmbudget serve` answers `/healthz` at `url`."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout) as r:
            return r.status == 200 and bool(json.loads(r.read(4096)).get("status") == "ok")
    except (OSError, ValueError):
        return False


def server_url(cfg: Config) -> str:
    """The configured server's address (a wildcard host is reached on loopback)."""
    host = cfg.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{cfg.server.port}"


#: programs that misread a protocol's base-URL variable -> the variables not set for them. Gemini CLI
#: takes OPENAI_BASE_URL as a request to use an OpenAI-compatible server instead of Gemini
#: (packages/core/src/core/contentGenerator.ts `getAuthTypeFromEnv`)
_NOT_FOR_PROGRAM = {
    "gemini": frozenset({OPENAI.base_url_env}),
    "gemini.cmd": frozenset({OPENAI.base_url_env}),
}


def _backend_for(cfg: Config, kind: str) -> str | None:
    """The backend the child's `kind` SDKs go to: one named like the kind, else the first non-local one."""
    b = cfg.backends.get(kind)
    if b is not None and b.kind == kind:
        return kind
    for name, b in cfg.backends.items():
        if b.kind == kind and not b.local:
            return name
    return None


def attribution_headers(agent: str | None, session: str) -> dict[str, str]:
    """The X-LLMBudget-* headers that carry the run's attribution."""
    headers = {"X-LLMBudget-Session": session}
    if agent:
        headers["X-LLMBudget-Agent"] = agent
    return headers


def routed_base(base: str, *, agent: str | None, session: str) -> str:
    """The proxy's address with the run's attribution in the path: `BASE/_llmb/session=S/agent=A`.

    Every base URL the child gets starts with it, so a client that sends no header of its own (a
    plain SDK script) is still attributed by any `llmbudget serve`; ValueError for a value that
    cannot go in a path (`attribution_refusal`).
    """
    return base.rstrip("/") + prefix_path(session=session, agent=agent)


def attribution_refusal(value: str) -> str | None:
    """Why a session or agent name cannot travel in the run's base URLs, or None when it can."""
    return prefix_refusal(value)


def child_env(
    base: str,
    cfg: Config,
    *,
    agent: str | None,
    session: str,
    environ: Mapping[str, str],
    program: str | None = None,
) -> dict[str, str]:
    """The child's environment: the parent's, with every provider pointed at the proxy at `base`."""
    env = dict(environ)
    base = base.rstrip("/")
    routed = routed_base(base, agent=agent, session=session)
    skipped = _NOT_FOR_PROGRAM.get(Path(program).name, frozenset()) if program else frozenset()
    for protocol in PROTOCOLS.values():
        name = _backend_for(cfg, protocol.name)
        if name is not None and protocol.base_url_env not in skipped:
            env[protocol.base_url_env] = f"{routed}/{name}{protocol.base_url_suffix}"
    headers = attribution_headers(agent, session)
    # Claude Code: newline-separated `Name: value` lines added to every API call
    lines = [f"{k}: {v}" for k, v in headers.items()]
    old = environ.get("ANTHROPIC_CUSTOM_HEADERS", "").strip()
    env["ANTHROPIC_CUSTOM_HEADERS"] = "\n".join([old, *lines] if old else lines)
    # Gemini CLI: comma-separated `Name: value` pairs (utils/customHeaderUtils.ts)
    pairs = ", ".join(f"{k}: {v}" for k, v in headers.items())
    old = environ.get("GEMINI_CLI_CUSTOM_HEADERS", "").strip()
    env["GEMINI_CLI_CUSTOM_HEADERS"] = f"{old}, {pairs}" if old else pairs
    env["LLMBUDGET_SESSION"] = session
    if agent:
        env["LLMBUDGET_AGENT"] = agent
    env["LLMBUDGET_PROXY_URL"] = base
    return env


def codex_overrides(base: str, cfg: Config, *, agent: str | None, session: str) -> list[str]:
    """`-c` options making Codex use the proxy: Codex's built-in provider ignores OPENAI_BASE_URL.

    A custom provider (`model_providers.llmbudget`) speaking the Responses API over HTTPS, with
    the run's attribution in `http_headers` (and in its base URL's path); its key comes from
    `OPENAI_API_KEY`.
    """
    name = _backend_for(cfg, OPENAI.name)
    if name is None:
        return []
    headers = ", ".join(f'"{k}" = "{v}"' for k, v in attribution_headers(agent, session).items())
    p = f"model_providers.{CODEX_PROVIDER}"
    return [
        "-c",
        f'{p}.name="llmbudget"',
        "-c",
        f'{p}.base_url="{routed_base(base, agent=agent, session=session)}/{name}/v1"',
        "-c",
        f'{p}.wire_api="responses"',
        "-c",
        f'{p}.env_key="OPENAI_API_KEY"',
        "-c",
        f"{p}.http_headers={{{headers}}}",
        "-c",
        f'model_provider="{CODEX_PROVIDER}"',
    ]


def child_command(
    cmd: Sequence[str], base: str, cfg: Config, *, agent: str | None, session: str
) -> list[str]:
    """The command to run: `codex ...` gets the provider overrides right after the program name."""
    cmd = list(cmd)
    if cmd and Path(cmd[0]).name in ("codex", "codex.exe"):
        return [cmd[0], *codex_overrides(base, cfg, agent=agent, session=session), *cmd[1:]]
    return cmd


def run_config(cfg: Config, *, agent: str | None, session: str, budget: Decimal | None) -> Config:
    """The in-process proxy's config: the run's attribution stamped on every call, its budget added.

    The stamp is an `attribution.rules` entry on the `Host` header (every HTTP/1.1 request has one),
    so it sits below explicit `X-LLMBudget-*` headers and above known-client inference.
    """
    rules = [AttributionRule(header="host", field="session", value=session)]
    if agent:
        rules.append(AttributionRule(header="host", field="agent", value=agent))
    attribution = cfg.attribution.model_copy(update={"rules": [*rules, *cfg.attribution.rules]})
    update: dict[str, Any] = {"attribution": attribution}
    if budget is not None:
        limit = LimitConfig(
            name=f"run {session}",
            scope="session",
            match=glob.escape(session),
            limit_usd=budget,
            period="session",
            action="block",
        )
        budgets = cfg.budgets or BudgetsConfig()
        update["budgets"] = budgets.model_copy(update={"limits": [*budgets.limits, limit]})
    return cfg.model_copy(update=update)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def in_process_proxy(cfg: Config, db_url: str | None) -> Iterator[tuple[str, Any]]:
    """Serve the same ASGI app as `llmbudget serve` on a free loopback port until the block ends."""
    import uvicorn  # the server, only once a command is about to run under it

    services = Services.create(cfg, db_url=db_url)
    try:
        app = build_app(services)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="on",
                interface="asgi3",
                access_log=False,
                log_level="warning",
                proxy_headers=False,
                server_header=False,
                date_header=False,
            )
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="llmbudget-run-proxy"
        )
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise LLMBudgetError("the in-process proxy did not start")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}", services
        finally:
            server.should_exit = True
            thread.join(15)
            sock.close()
    finally:
        services.close()


def run_child(cmd: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the command to its end; its exit code (128 + N when signal N ended it, 130 for Ctrl-C).

    SIGTERM and SIGHUP sent to llmbudget are passed on to the command. Ctrl-C on a terminal
    reaches the command by itself (same process group); without a terminal it is passed on too.
    """
    try:
        proc = subprocess.Popen(list(cmd), env=dict(env))
    except OSError as e:
        raise not_run(cmd[0], e, env.get("PATH")) from None
    interactive = sys.stdin is not None and sys.stdin.isatty()
    interrupted = False

    def forward(signum: int, frame: object) -> None:
        nonlocal interrupted
        if signum == signal.SIGINT:
            interrupted = True
            if interactive:
                return  # the terminal sent it to the whole foreground group already
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    forwarded = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in forwarded:
            previous[s] = signal.signal(s, forward)
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # a handler installed by someone else raised it
                interrupted = True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if rc < 0:
        return 128 - rc
    if interrupted and rc == 0:
        return 130
    return rc


def not_run(program: str, e: OSError, path: str | None) -> CommandNotRun:
    """Why `program` did not start, in a shell's words and with a shell's exit code (127 or 126)."""
    if isinstance(e, FileNotFoundError):
        found = program if os.sep in program else shutil.which(program, path=path)
        if found is None or not os.path.exists(found):
            what = "No such file or directory" if os.sep in program else "command not found"
            return CommandNotRun(f"{program}: {what}", 127)
        # the file is there: what is missing is the interpreter its `#!` line names
        return CommandNotRun(f"{program}: bad interpreter: No such file or directory", 126)
    if isinstance(e, PermissionError) and os.sep in program and os.path.isdir(program):
        return CommandNotRun(f"{program}: Is a directory", 126)
    if isinstance(e, PermissionError):
        return CommandNotRun(f"{program}: Permission denied", 126)
    return CommandNotRun(f"{program}: cannot execute: {e.strerror or e}", 126)


def read_summary(ledger: Any, session: str, *, settle_s: float = 0.0, quiet_s: float = 1.0) -> RunSummary:
    """The run's calls from the ledger.

    With `settle_s`, another process (a running server) is still writing: read again until the
    count has not changed for `quiet_s`, at most `settle_s` in all.
    """
    deadline = time.monotonic() + settle_s
    last, stable_since = -1, time.monotonic()
    while True:
        events = list(ledger.iter_events(filters={"session": session}))
        now = time.monotonic()
        if len(events) != last:
            last, stable_since = len(events), now
        if now >= deadline or now - stable_since >= quiet_s:
            break
        time.sleep(0.2)
    summary = RunSummary(session=session)
    for ev in events:
        summary.add(ev)
    return summary
